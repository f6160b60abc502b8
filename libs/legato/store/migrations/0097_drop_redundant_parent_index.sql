-- workflow_instance_children (0007: parent_instance_id, parent_step_id, parent_iteration, seq, on the
-- same rows) serves every lookup workflow_instance_parent (0002: the same columns without seq) did.
-- Every write of a child run (a foreach iteration, a subworkflow, a loop's turn: inserted, then updated
-- as it ends, never a HOT update since its status is indexed) paid for both.
DROP INDEX IF EXISTS workflow_instance_parent;
