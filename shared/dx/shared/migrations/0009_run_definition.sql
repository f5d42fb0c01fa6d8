-- A run pins what it runs: the module's definition (module, database, connection, recipients) is
-- copied when the run is created, and every stage reads this copy, so a configuration applied
-- during the run changes only later runs. json, not jsonb: it keeps the fields in table order.
ALTER TABLE dx.runs ADD COLUMN definition json;
