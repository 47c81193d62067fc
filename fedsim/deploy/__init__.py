"""The federation on Flower's deployment runtime: certificates and keys (``certs``), the OS processes
(``processes``), Flower's own commands (``flower``) and ``fedleak deploy`` itself (``run``)."""
