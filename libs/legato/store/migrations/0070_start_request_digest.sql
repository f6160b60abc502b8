-- The digest of an API start request (params + pinned version), so reusing a request_id with a different
-- request is a `conflict` instead of silently returning the first run.

ALTER TABLE accepted_start ADD COLUMN request_digest text;
