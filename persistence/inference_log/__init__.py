"""The inference log: write-ahead files, the writer thread that copies them into the database, the
sinks, dead letters and the log's metrics. Imports the ORM (models, db, partitions, retention),
never the HTTP layer."""
