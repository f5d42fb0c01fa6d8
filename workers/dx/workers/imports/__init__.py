"""The imports wing: plan, chunk and reduce of the Importer and the Updater, with their logic."""
