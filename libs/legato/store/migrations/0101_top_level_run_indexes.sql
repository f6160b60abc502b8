-- legato: no transaction
-- A run listing leaves out child runs (foreach and loop iterations, subworkflow runs) unless asked
-- (`include_children`). Its indexes held every child run all the same, so after one 100,000-iteration
-- foreach the default listing walked 100,000 child entries to find the newest top-level runs
-- (~12 ms a page, growing with every fan-out), and each child run, inserted and then updated as it
-- ended (never a HOT update: its status is indexed), wrote its entries into both.
--
-- The listing's indexes by workflow and by status are replaced by ones that hold top-level runs
-- only, and a third serves the listing across workflows. `workflow_instance_all_recent` (every run,
-- newest first) stays for listings that include children; `workflow_instance_queue` (workflow,
-- status, seq) stays whole: a scheduler loads a workflow's queued and running runs through it, child
-- runs included.
--
-- Built concurrently, outside a transaction: runs go on being written while the indexes are built
-- (1,000,000 runs, 900,000 of them child runs, took 0.55 s in one transaction on a 2-core machine,
-- writes waiting all that time). The new indexes exist before the old ones are dropped, so the
-- listing always has one.
CREATE INDEX CONCURRENTLY IF NOT EXISTS workflow_instance_top_by_workflow
    ON workflow_instance (workflow_id, seq DESC) WHERE parent_instance_id IS NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS workflow_instance_top_by_status
    ON workflow_instance (status, seq DESC) WHERE parent_instance_id IS NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS workflow_instance_top_recent
    ON workflow_instance (seq DESC) WHERE parent_instance_id IS NULL;
DROP INDEX CONCURRENTLY IF EXISTS workflow_instance_recent;
DROP INDEX CONCURRENTLY IF EXISTS workflow_instance_status;
