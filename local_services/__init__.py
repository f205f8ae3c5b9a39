"""Stand-ins, started on this machine, for services production runs elsewhere: a Spark standalone cluster
(with the commands docker-compose.yaml's services run) and Azurite for Azure Blob Storage. Tests and
benchmarks both start them, so they live in neither; the kernel and the layers never import them."""
