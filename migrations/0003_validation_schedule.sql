-- When the reconciler next re-checks the live setup of a READY or BROKEN onboarding. Shared by every
-- replica: a replica takes a due check by moving this time forward (compare-and-set), so each check
-- is made once, and a restart neither forgets the schedule nor checks everything at once.
ALTER TABLE onboardings ADD COLUMN next_validation_time BIGINT;
CREATE INDEX onboardings_by_next_validation ON onboardings (next_validation_time);
