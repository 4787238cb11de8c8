-- Facts about the store itself (see ../0002_meta.sql): `deployment`, the id this store shares
-- with its Redis, and `health_probe`, rewritten by /api/health to prove the store takes writes.
CREATE TABLE IF NOT EXISTS meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
