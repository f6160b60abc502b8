-- Archived workflows: inactive, hidden from `workflow list` unless asked for, runs kept.

ALTER TABLE workflow ADD COLUMN archived_at timestamptz;
