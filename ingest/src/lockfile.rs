//! Exclusive lock files: one holder at a time of a control log slot or an archive's source partition.
//!
//! A lock is an `flock` on the open file, so the OS releases it when its process dies (a crash never
//! leaves it held), and a second open in the same process is refused like another process. The holder
//! writes who it is into the file, for the one refused to read.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::Path;

/// Takes the lock at `path` (creating the file): `Ok(file)` holds it for as long as `file` lives;
/// `Err(holder)` when another open file has it, with what its holder wrote ("held by process N since
/// T"; empty if it wrote nothing).
pub fn take(path: &Path) -> io::Result<Result<File, String>> {
    let mut f = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path)?;
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        return Ok(Err(holder.trim().to_owned()));
    }
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let said = format!(
        "held by process {} since {}",
        std::process::id(),
        vigil_schemas::timestamp::format_rfc3339_ms(since)
    );
    f.set_len(0)?;
    f.rewind()?;
    f.write_all(said.as_bytes())?;
    Ok(Ok(f))
}
