"""The ground floor every other floor may use: distributed context, sharding of work, progress bars."""
