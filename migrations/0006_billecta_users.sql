-- The Billecta users whose credentials the service holds, as JSON (no secrets): Billecta allows one
-- live SecureToken per user, so a user's token and password are stored once, in credentials under
-- the user's id (creditor_id holds that scope), and the account and each creditor's API access
-- refer to the user. NULL until the first user is stored. Rows stored before this migration keep
-- their secrets under the old per-stage fields until the service's start-up upgrade moves them.
ALTER TABLE onboardings ADD COLUMN users TEXT;
