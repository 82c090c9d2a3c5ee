"""Our stand-in for kafka-python's test/service.py, which its PyPI sdist does not ship
(the integration fixtures import it). The fixtures use only ExternalService when the
broker is given by KAFKA_URI, as here; they never spawn one."""


class ExternalService:
    def __init__(self, host, port):
        self.host = host
        self.port = port

    def start(self):
        pass

    def stop(self):
        pass

    def dump_logs(self):
        pass

    def wait_for(self, pattern, timeout=30):
        return True


class SpawnedService:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("the broker is external here (KAFKA_URI)")
