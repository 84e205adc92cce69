-- Keyfob's refresh-token rotation on PostgreSQL: one function call per refresh grant.
--
-- The SQL twin of store/sqlite_oauth.py's rotate_refresh_tx: the same checks in the same
-- order, the same outcomes (apps.TokensRepo.rotate_refresh states the rules, RFC 9700
-- 4.14.2). The shared tests (tests/test_token_rotation.py) run every backend through
-- them. Installed by migration 0021; a later change comes with a migration that
-- installs this file again (CREATE OR REPLACE).
--
-- Outcomes: 0 rotated (the successors stored), 1 replayed (used before: the family was
-- revoked), 2 the token is revoked or expired, 3 the grant has ended (both leave the
-- token spent), 4 the grant's end is not the one the successors were built with
-- (p_seen_ends): nothing was changed, grant_ends says the end to build them with.

CREATE OR REPLACE FUNCTION keyfob_rotate_refresh(
  p_token_hash text, p_grant_id text, p_family_id text, p_now double precision,
  p_seen_ends double precision,
  p_hashes text[], p_kinds text[], p_grant_ids text[], p_client_ids text[],
  p_family_ids text[], p_scopes text[], p_resources text[],
  p_created double precision[], p_expires double precision[],
  p_used double precision[], p_revoked double precision[],
  OUT outcome integer, OUT grant_ends double precision
) LANGUAGE plpgsql AS $$
DECLARE
  g_found boolean;
  g_revoked double precision;
  t_revoked double precision;
  t_expires double precision;
BEGIN
  -- The grant first, share-locked until this commits: revoking or ending it (an UPDATE
  -- of its row, then of its tokens: GrantsRepo.revoke, _apply_expiry) waits for this
  -- rotation and then reaches the successors too, or went first and is seen here. Grant
  -- row before token rows, the order those take them in, so the two never deadlock.
  SELECT g.revoked_at, g.expires_at INTO g_revoked, grant_ends
    FROM grants g WHERE g.id = p_grant_id FOR SHARE;
  g_found := FOUND;
  IF g_found AND g_revoked IS NULL AND (grant_ends IS NULL OR grant_ends > p_now)
     AND grant_ends IS DISTINCT FROM p_seen_ends THEN
    outcome := 4;  -- a live grant whose end moved since the caller read it
    RETURN;
  END IF;
  -- spend it only if unused; else two parties hold it: the family ends, no grace period
  UPDATE tokens SET used_at = p_now
   WHERE token_hash = p_token_hash AND used_at IS NULL
   RETURNING revoked_at, expires_at INTO t_revoked, t_expires;
  IF NOT FOUND THEN
    UPDATE tokens SET revoked_at = p_now WHERE family_id = p_family_id AND revoked_at IS NULL;
    outcome := 1;
    RETURN;
  END IF;
  IF t_revoked IS NOT NULL OR t_expires < p_now THEN
    outcome := 2;
    RETURN;
  END IF;
  IF NOT g_found OR g_revoked IS NOT NULL OR (grant_ends IS NOT NULL AND grant_ends <= p_now) THEN
    outcome := 3;
    RETURN;
  END IF;
  -- tokens never outlive the grant (least ignores a NULL end: never)
  INSERT INTO tokens (token_hash, kind, grant_id, client_id, family_id, scope, resource,
                      created_at, expires_at, used_at, revoked_at)
  SELECT h, k, gi, ci, fi, s, r, c, least(e, grant_ends), u, v
    FROM unnest(p_hashes, p_kinds, p_grant_ids, p_client_ids, p_family_ids, p_scopes,
                p_resources, p_created, p_expires, p_used, p_revoked)
         AS n(h, k, gi, ci, fi, s, r, c, e, u, v);
  outcome := 0;
END
$$;
