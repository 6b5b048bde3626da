// archive tests
