-- The API credentials' description (who, warnings) and the attested webhook setup of each creditor,
-- as JSON; their secrets live in credentials.
ALTER TABLE creditors ADD COLUMN api_access TEXT;
ALTER TABLE creditors ADD COLUMN webhooks TEXT;
