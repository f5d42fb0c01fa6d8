-- sslmode is an option of a client's database only, and its default became verify-full: the old
-- default that every stored sftp and local connection carries (and each run's copy of one) is
-- dropped, or those would no longer validate. A postgres or mysql connection keeps what it has.
UPDATE dx.connections SET config = config - 'sslmode' WHERE type NOT IN ('postgres', 'mysql') AND config ? 'sslmode';
UPDATE dx.runs SET definition = json_build_object(
    'module', definition->'module', 'database', definition->'database',
    'connection', (definition->'connection')::jsonb - 'sslmode', 'notify', definition->'notify')
  WHERE definition->'connection'->>'type' IN ('sftp', 'local')
    AND (definition->'connection')::jsonb ? 'sslmode';
