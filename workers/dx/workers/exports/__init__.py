"""The exports wing: plan, chunk and reduce of the Displacer and the Exporter, with their logic."""
