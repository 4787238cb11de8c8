-- Facts about the store itself. `deployment`: the id this store shares with its Redis (the key
-- {prefix}:deployment), so that a service never runs on an empty or foreign database beside a
-- live deployment. `health_probe`: rewritten by /api/health to prove the file takes writes.
CREATE TABLE IF NOT EXISTS meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
