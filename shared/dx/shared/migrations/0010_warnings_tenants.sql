-- A run's warnings: what it did not do as the client may have meant, while it went on
-- ([{code, message}], e.g. UNKNOWN_COLUMN). A tenant's DataExchange is sold apart (enabled),
-- and its time zone is the default of its modules' schedules.
ALTER TABLE dx.runs ADD COLUMN warnings jsonb NOT NULL DEFAULT '[]';
ALTER TABLE dx.tenants ADD COLUMN enabled boolean NOT NULL DEFAULT true;
ALTER TABLE dx.tenants ADD COLUMN timezone text;
