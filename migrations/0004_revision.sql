-- Counts the writes that changed an onboarding or anything it holds (stages, creditors, credentials),
-- unlike last_event, which audited reads also move. Every such write increments it in the same
-- transaction, on whichever replica, so a replica may reuse what it read of an onboarding at a
-- revision for as long as the row still shows that revision.
ALTER TABLE onboardings ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
