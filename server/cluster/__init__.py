"""Several replicas on one PostgreSQL: claims with leases, fencing, shared limits and
events across replicas. Wired in only when ``database_url`` is set."""
