-- Keyfob's metering on PostgreSQL: one function call per reservation and per settlement.
--
-- These functions apply decisions made by keyfob/metering/rules.py to the counters
-- table; they hold no policy of their own. The Python side passes, for one call, the
-- counters of every limit (limits laid end to end: p_limit_of says which limit each
-- counter belongs to, the last counter of a limit is the one held), each limit's cap and
-- what the call holds on it. The shared backend tests hold this file to rules.py.
--
-- Outcomes of keyfob_reserve: 0 reserved, 1 token or grant not live, 2 grant edited since
-- the caller planned (basis), 3 counters to compute from the ledger first (p_seeds lists
-- them, 1-based), 4 refused (the limit's 1-based index and its counters' values).

-- What a counter counts, from its key: the SQL twin of rules.measure_of.
CREATE OR REPLACE FUNCTION keyfob_measure(p_key text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN left(p_key, 4) = 'rpm:' THEN 'calls'
              WHEN left(p_key, 4) = 'tpm:' THEN 'tokens'
              ELSE 'usd' END
$$;

CREATE OR REPLACE FUNCTION keyfob_reserve(
  p_entry_id text, p_token_hash text, p_grant_id text, p_user_id text, p_client_id text,
  p_provider_id text, p_model text, p_endpoint text, p_streamed boolean,
  p_amount bigint, p_tokens integer, p_now double precision, p_basis double precision,
  p_downgraded_from text, p_instance_id text,
  p_scopes text[], p_keys text[], p_starts double precision[], p_expires double precision[],
  p_limit_of integer[], p_caps bigint[], p_needs bigint[], p_single boolean[],
  p_refill_key text,
  OUT outcome integer, OUT refused integer, OUT seeds integer[],
  OUT spent bigint[], OUT reserved bigint[]
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  n integer := coalesce(array_length(p_keys, 1), 0);
  m integer := coalesce(array_length(p_caps, 1), 0);
  v_updated double precision;
  v_found boolean;
  c_spent bigint[] := array_fill(0::bigint, ARRAY[greatest(n, 1)]);
  c_res bigint[] := array_fill(0::bigint, ARRAY[greatest(n, 1)]);
  l_spent bigint[] := array_fill(0::bigint, ARRAY[greatest(m, 1)]);
  l_res bigint[] := array_fill(0::bigint, ARRAY[greatest(m, 1)]);
  held_key text[] := '{}';
  held_order integer[];
  row_spent bigint; row_res bigint; row_seeded double precision;
  v_refill bigint; v_old bigint;
  i integer; j integer; k integer;
  lock_grant boolean := false;
BEGIN
  seeds := '{}';
  FOR j IN 1..m LOOP
    IF NOT p_single[j] THEN lock_grant := true; END IF;
  END LOOP;
  -- the token and its grant must be live; a limit summing several counters takes the
  -- grant's row lock, which serialises the reservations of one grant (its sum is exact)
  IF lock_grant THEN
    SELECT g.updated_at INTO v_updated FROM tokens t JOIN grants g ON g.id = t.grant_id
     WHERE t.token_hash = p_token_hash AND t.revoked_at IS NULL AND t.expires_at > p_now
       AND g.id = p_grant_id AND g.revoked_at IS NULL
       FOR NO KEY UPDATE OF g;
  ELSE
    SELECT g.updated_at INTO v_updated FROM tokens t JOIN grants g ON g.id = t.grant_id
     WHERE t.token_hash = p_token_hash AND t.revoked_at IS NULL AND t.expires_at > p_now
       AND g.id = p_grant_id AND g.revoked_at IS NULL;
  END IF;
  IF NOT FOUND THEN outcome := 1; RETURN; END IF;
  IF p_basis IS NOT NULL AND v_updated IS DISTINCT FROM p_basis THEN outcome := 2; RETURN; END IF;

  -- the wallet's monthly refill, once per calendar month (tops the balance up *to* it)
  IF p_refill_key IS NOT NULL THEN
    UPDATE wallets SET refilled_for = p_refill_key
     WHERE user_id = p_user_id AND monthly_refill_micro_usd IS NOT NULL
       AND refilled_for IS DISTINCT FROM p_refill_key
    RETURNING monthly_refill_micro_usd INTO v_refill;
    IF FOUND THEN
      INSERT INTO counters (scope, key, spent, reserved)
        VALUES ('wallet:' || p_user_id, 'wallet', 0, 0) ON CONFLICT DO NOTHING;
      SELECT c.spent INTO v_old FROM counters c
       WHERE c.scope = 'wallet:' || p_user_id AND c.key = 'wallet' FOR UPDATE;
      UPDATE counters c SET spent = least(v_old, -v_refill)
       WHERE c.scope = 'wallet:' || p_user_id AND c.key = 'wallet';
      INSERT INTO wallet_transactions
        (id, user_id, kind, amount_micro_usd, balance_after_micro_usd, ledger_id, note, created_at)
        VALUES (md5(p_entry_id || ':refill'), p_user_id, 'refill',
                greatest(-v_old, v_refill) + v_old, greatest(-v_old, v_refill), NULL,
                'monthly refill ' || p_refill_key, p_now);
    END IF;
  END IF;

  -- read every counter; a stale one (rules.usable_as_stored / zero_when_missing) must be
  -- computed from the ledger first
  FOR i IN 1..n LOOP
    SELECT c.spent, c.reserved, c.seeded_for INTO row_spent, row_res, row_seeded
      FROM counters c WHERE c.scope = p_scopes[i] AND c.key = p_keys[i];
    v_found := FOUND;
    IF v_found THEN
      IF p_basis IS NULL OR p_starts[i] IS NULL OR row_seeded = p_basis THEN
        c_spent[i] := row_spent; c_res[i] := row_res;
      ELSE
        seeds := seeds || i;
      END IF;
    ELSIF NOT (p_basis IS NULL OR p_starts[i] IS NULL OR p_starts[i] >= p_basis) THEN
      seeds := seeds || i;
    END IF;
  END LOOP;
  IF array_length(seeds, 1) IS NOT NULL THEN outcome := 3; RETURN; END IF;

  -- every limit must fit (rules.decide); the first that does not is named
  FOR i IN 1..n LOOP
    j := p_limit_of[i];
    l_spent[j] := l_spent[j] + c_spent[i];
    l_res[j] := l_res[j] + c_res[i];
  END LOOP;
  FOR j IN 1..m LOOP
    IF l_spent[j] + l_res[j] + p_needs[j] > p_caps[j] THEN
      outcome := 4; refused := j;
      spent := ARRAY(SELECT c_spent[x] FROM generate_subscripts(p_keys, 1) x WHERE p_limit_of[x] = j ORDER BY x);
      reserved := ARRAY(SELECT c_res[x] FROM generate_subscripts(p_keys, 1) x WHERE p_limit_of[x] = j ORDER BY x);
      RETURN;
    END IF;
  END LOOP;

  -- hold the last counter of each limit, in (scope, key) order (the order every writer
  -- locks counters in, so two calls never wait on each other in a cycle); a limit of one
  -- counter holds only if it still fits, which makes it exact without the grant's lock
  held_order := ARRAY(
    SELECT x FROM generate_subscripts(p_keys, 1) x
     WHERE x = n OR p_limit_of[x + 1] <> p_limit_of[x]
     ORDER BY p_scopes[x], p_keys[x]);
  FOREACH i IN ARRAY held_order LOOP
    j := p_limit_of[i];
    INSERT INTO counters AS c (scope, key, spent, reserved, seeded_for, expires_at)
      VALUES (p_scopes[i], p_keys[i], 0, p_needs[j], p_basis, p_expires[i])
      ON CONFLICT (scope, key) DO UPDATE SET reserved = c.reserved + excluded.reserved
      WHERE NOT p_single[j] OR c.spent + c.reserved + excluded.reserved <= p_caps[j]
      RETURNING c.spent, c.reserved INTO row_spent, row_res;
    IF NOT FOUND THEN
      -- a concurrent call took the room between the read and the hold: undo the holds
      -- made so far (nothing was committed) and report the limit as it is now
      FOREACH k IN ARRAY held_order LOOP
        EXIT WHEN k = i;
        UPDATE counters c SET reserved = c.reserved - p_needs[p_limit_of[k]]
         WHERE c.scope = p_scopes[k] AND c.key = p_keys[k];
      END LOOP;
      SELECT c.spent, c.reserved INTO row_spent, row_res FROM counters c
       WHERE c.scope = p_scopes[i] AND c.key = p_keys[i];
      outcome := 4; refused := j;
      spent := ARRAY[row_spent]; reserved := ARRAY[row_res];
      RETURN;
    END IF;
    l_spent[j] := l_spent[j] - c_spent[i] + row_spent;
    l_res[j] := l_res[j] - c_res[i] + row_res;
  END LOOP;

  held_key := ARRAY(
    SELECT p_keys[x] FROM generate_subscripts(p_keys, 1) x
     WHERE x = n OR p_limit_of[x + 1] <> p_limit_of[x] ORDER BY x);
  INSERT INTO ledger (id, grant_id, user_id, client_id, provider_id, model, endpoint,
                      streamed, status, reserved_micro_usd, window_keys_json,
                      needs_reconciliation, created_at, tokens_reserved, from_wallet,
                      downgraded_from, instance_id)
    VALUES (p_entry_id, p_grant_id, p_user_id, p_client_id, p_provider_id, p_model,
            p_endpoint, p_streamed, 'reserved', p_amount, to_json(held_key)::text, false,
            p_now, p_tokens, 'wallet' = ANY(held_key), p_downgraded_from, p_instance_id);
  outcome := 0;
  spent := l_spent[1:m];
  reserved := l_res[1:m];
END
$$;

-- Settle one call: the ledger row leaves ``reserved`` (only once: a settled row is left
-- alone) and every counter it lists moves (reserved -= held, spent += actual, by the
-- counter's measure: rules.settle_moves). A wallet charge writes its history row.
--
-- Its commit does not wait for the WAL flush (synchronous_commit off for this
-- transaction only): the reservation before it was flushed, so the call is in the
-- ledger whatever happens; a settlement lost to a crash of PostgreSQL itself (not of a
-- gateway: a gateway's kill -9 loses nothing committed) leaves the row reserved, which
-- is the bound, never less. The gateway replays its recent settlements after it loses
-- its connections (postgres.py, Replays), and this function is idempotent. Why: the
-- flush held the counters' row locks for a disk sync per settlement, the c=1 latency of
-- every call and the throughput ceiling of a grant's calls (docs/BENCHMARKS.md).
CREATE OR REPLACE FUNCTION keyfob_settle(
  p_entry_id text, p_status text, p_cost bigint, p_usage_source text,
  p_input integer, p_output integer, p_cached integer, p_reasoning integer,
  p_recon boolean, p_upstream_status integer, p_error text, p_now double precision,
  OUT scope text, OUT key text, OUT spent bigint, OUT reserved bigint
) RETURNS SETOF record LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_grant text; v_user text; v_reserved bigint; v_tokens integer; v_keys text;
  v_scope text; v_key text; v_measure text; v_held bigint; v_actual bigint;
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  UPDATE ledger SET status = p_status, cost_micro_usd = p_cost, usage_source = p_usage_source,
         input_tokens = p_input, output_tokens = p_output, cached_input_tokens = p_cached,
         reasoning_tokens = p_reasoning, needs_reconciliation = p_recon,
         upstream_status = p_upstream_status, error = p_error, settled_at = p_now
   WHERE id = p_entry_id AND status = 'reserved'
  RETURNING grant_id, user_id, reserved_micro_usd, tokens_reserved, window_keys_json
       INTO v_grant, v_user, v_reserved, v_tokens, v_keys;
  IF NOT FOUND THEN RETURN; END IF;
  FOR v_scope, v_key IN
    SELECT CASE WHEN k = 'wallet' THEN 'wallet:' || v_user ELSE v_grant END AS s, k
      FROM json_array_elements_text(v_keys::json) AS k ORDER BY 1, 2
  LOOP
    v_measure := keyfob_measure(v_key);
    IF v_measure = 'usd' THEN v_held := v_reserved; v_actual := p_cost;
    ELSIF v_measure = 'calls' THEN v_held := 1; v_actual := 1;
    ELSE v_held := coalesce(v_tokens, 0); v_actual := coalesce(p_input, 0) + coalesce(p_output, 0);
    END IF;
    UPDATE counters c SET reserved = c.reserved - v_held, spent = c.spent + v_actual
     WHERE c.scope = v_scope AND c.key = v_key
    RETURNING c.scope, c.key, c.spent, c.reserved INTO scope, key, spent, reserved;
    IF FOUND THEN
      IF v_key = 'wallet' AND p_cost <> 0 THEN
        INSERT INTO wallet_transactions
          (id, user_id, kind, amount_micro_usd, balance_after_micro_usd, ledger_id, note, created_at)
          VALUES (md5(p_entry_id || ':charge'), v_user, 'charge', -p_cost, -spent, p_entry_id,
                  NULL, p_now);
      END IF;
      RETURN NEXT;
    END IF;
  END LOOP;
END
$$;

-- A reservation, durable before it returns, without holding its locks through the disk
-- sync: keyfob_reserve's transaction commits without waiting for the WAL flush (its row
-- locks on the counters, the grant and the ledger row are released at once), then a
-- second transaction writes one WAL record (a transactional logical message: no table,
-- no lock) and commits waiting for the flush, which covers everything written before it
-- in the WAL, the reservation included. So the caller sends nothing upstream before the
-- reservation is on disk (invariant 2), and the calls of one grant no longer queue
-- behind each other's disk syncs: concurrent flushes are one (group commit). Called
-- with CALL, outside any transaction block (it commits inside).
CREATE OR REPLACE PROCEDURE keyfob_reserve_durably(
  p_entry_id text, p_token_hash text, p_grant_id text, p_user_id text, p_client_id text,
  p_provider_id text, p_model text, p_endpoint text, p_streamed boolean,
  p_amount bigint, p_tokens integer, p_now double precision, p_basis double precision,
  p_downgraded_from text, p_instance_id text,
  p_scopes text[], p_keys text[], p_starts double precision[], p_expires double precision[],
  p_limit_of integer[], p_caps bigint[], p_needs bigint[], p_single boolean[],
  p_refill_key text,
  INOUT outcome integer DEFAULT NULL, INOUT refused integer DEFAULT NULL,
  INOUT seeds integer[] DEFAULT NULL, INOUT spent bigint[] DEFAULT NULL,
  INOUT reserved bigint[] DEFAULT NULL
) LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  SELECT r.outcome, r.refused, r.seeds, r.spent, r.reserved
    INTO outcome, refused, seeds, spent, reserved
    FROM keyfob_reserve(p_entry_id, p_token_hash, p_grant_id, p_user_id, p_client_id,
      p_provider_id, p_model, p_endpoint, p_streamed, p_amount, p_tokens, p_now, p_basis,
      p_downgraded_from, p_instance_id, p_scopes, p_keys, p_starts, p_expires,
      p_limit_of, p_caps, p_needs, p_single, p_refill_key) r;
  IF outcome = 0 THEN
    COMMIT;
    PERFORM pg_logical_emit_message(true, 'keyfob', 'reserved');
  END IF;
END
$$;

-- The common case, a call under one limit of one counter counting money (a calendar
-- cap: no rolling window, rate, wallet or refill), as one statement instead of
-- keyfob_reserve's loops over arrays: measured ~100 us less of PostgreSQL's CPU per
-- reservation and settlement (docs/BENCHMARKS.md). It holds only when keyfob_reserve
-- would hold, with the same effects; for anything else (token or grant not live, the
-- grant edited since the caller planned, a counter to compute from the ledger first, or
-- no room) it returns no row and changes nothing, and the caller asks keyfob_reserve,
-- which decides and explains. The shared backend tests run both.
CREATE OR REPLACE FUNCTION keyfob_reserve_one(
  p_entry_id text, p_token_hash text, p_grant_id text, p_user_id text, p_client_id text,
  p_provider_id text, p_model text, p_endpoint text, p_streamed boolean,
  p_amount bigint, p_tokens integer, p_now double precision, p_basis double precision,
  p_downgraded_from text, p_instance_id text,
  p_scope text, p_key text, p_start double precision, p_expires double precision,
  p_cap bigint, p_need bigint,
  OUT spent bigint, OUT reserved bigint
) RETURNS SETOF record LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  WITH live AS (
    -- keyfob_reserve's checks: the token and grant live, the grant as planned, and the
    -- counter usable as stored (rules.usable_as_stored / zero_when_missing)
    SELECT 1 FROM tokens t JOIN grants g ON g.id = t.grant_id
     WHERE t.token_hash = p_token_hash AND t.revoked_at IS NULL AND t.expires_at > p_now
       AND g.id = p_grant_id AND g.revoked_at IS NULL
       AND (p_basis IS NULL OR g.updated_at = p_basis)
       AND p_need <= p_cap
       AND (p_basis IS NULL OR p_start IS NULL OR coalesce(
             (SELECT coalesce(c.seeded_for = p_basis, false) FROM counters c
               WHERE c.scope = p_scope AND c.key = p_key),
             p_start >= p_basis))
  ), held AS (
    INSERT INTO counters AS c (scope, key, spent, reserved, seeded_for, expires_at)
    SELECT p_scope, p_key, 0, p_need, p_basis, p_expires FROM live
    ON CONFLICT (scope, key) DO UPDATE SET reserved = c.reserved + excluded.reserved
     WHERE c.spent + c.reserved + excluded.reserved <= p_cap
    RETURNING c.spent, c.reserved
  ), entry AS (
    INSERT INTO ledger (id, grant_id, user_id, client_id, provider_id, model, endpoint,
                        streamed, status, reserved_micro_usd, window_keys_json,
                        needs_reconciliation, created_at, tokens_reserved, from_wallet,
                        downgraded_from, instance_id)
    SELECT p_entry_id, p_grant_id, p_user_id, p_client_id, p_provider_id, p_model,
           p_endpoint, p_streamed, 'reserved', p_amount, to_json(ARRAY[p_key])::text,
           false, p_now, p_tokens, false, p_downgraded_from, p_instance_id
      FROM held
  )
  SELECT held.spent::bigint, held.reserved::bigint FROM held;
END
$$;

-- keyfob_reserve_one, durable before it returns with its locks released before the
-- flush (as keyfob_reserve_durably); reserved is NULL when it held nothing.
CREATE OR REPLACE PROCEDURE keyfob_reserve_one_durably(
  p_entry_id text, p_token_hash text, p_grant_id text, p_user_id text, p_client_id text,
  p_provider_id text, p_model text, p_endpoint text, p_streamed boolean,
  p_amount bigint, p_tokens integer, p_now double precision, p_basis double precision,
  p_downgraded_from text, p_instance_id text,
  p_scope text, p_key text, p_start double precision, p_expires double precision,
  p_cap bigint, p_need bigint,
  INOUT spent bigint DEFAULT NULL, INOUT reserved bigint DEFAULT NULL
) LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  SELECT r.spent, r.reserved INTO spent, reserved
    FROM keyfob_reserve_one(p_entry_id, p_token_hash, p_grant_id, p_user_id, p_client_id,
      p_provider_id, p_model, p_endpoint, p_streamed, p_amount, p_tokens, p_now, p_basis,
      p_downgraded_from, p_instance_id, p_scope, p_key, p_start, p_expires, p_cap,
      p_need) r;
  IF reserved IS NOT NULL THEN
    COMMIT;
    PERFORM pg_logical_emit_message(true, 'keyfob', 'reserved');
  END IF;
END
$$;

-- Settle a call reserved by keyfob_reserve_one, when its row still lists that one
-- counter (a counter computed from the ledger meanwhile adds its key to open rows):
-- keyfob_settle's effects in one statement. No row back: nothing changed (settled
-- already, or more keys), and the caller asks keyfob_settle.
CREATE OR REPLACE FUNCTION keyfob_settle_one(
  p_entry_id text, p_status text, p_cost bigint, p_usage_source text,
  p_input integer, p_output integer, p_cached integer, p_reasoning integer,
  p_recon boolean, p_upstream_status integer, p_error text, p_now double precision,
  p_scope text, p_key text,
  OUT scope text, OUT key text, OUT spent bigint, OUT reserved bigint
) RETURNS SETOF record LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);  -- as keyfob_settle
  RETURN QUERY
  WITH entry AS (
    UPDATE ledger SET status = p_status, cost_micro_usd = p_cost,
           usage_source = p_usage_source, input_tokens = p_input, output_tokens = p_output,
           cached_input_tokens = p_cached, reasoning_tokens = p_reasoning,
           needs_reconciliation = p_recon, upstream_status = p_upstream_status,
           error = p_error, settled_at = p_now
     WHERE id = p_entry_id AND status = 'reserved'
       AND window_keys_json = to_json(ARRAY[p_key])::text
    RETURNING reserved_micro_usd
  )
  UPDATE counters c SET reserved = c.reserved - entry.reserved_micro_usd,
         spent = c.spent + p_cost
    FROM entry WHERE c.scope = p_scope AND c.key = p_key
  RETURNING c.scope::text, c.key::text, c.spent::bigint, c.reserved::bigint;
END
$$;

-- Several calls' common-case settlements and reservations in one round trip and one
-- transaction (store/metering/pg_batch.py: what a process sends while its earlier
-- round trips are on their way). Each op is exactly keyfob_settle_one (kind 0) or
-- keyfob_reserve_one (kind 1) with its own arguments; o_spent/o_reserved give each op's
-- counter after it, NULL where that function would have returned no row (the caller
-- then asks keyfob_settle or keyfob_reserve, as for a lone call). The caller orders the
-- ops by (scope, key), settlements before reservations of the same counter, so two
-- batches lock counters in one order (no cycle) and a reservation sees the room its
-- process's settlements freed.
--
-- Durability as each op alone: the settlements' commit would not wait for the WAL flush
-- (keyfob_settle_one), but a batch that holds any reservation commits waiting for it
-- (the session's setting is put back), so nothing goes upstream before it is on disk.
CREATE OR REPLACE FUNCTION keyfob_meter_many(
  p_kind integer[], p_id text[], p_scope text[], p_key text[], p_now double precision[],
  p_status text[], p_cost bigint[], p_source text[], p_input integer[], p_output integer[],
  p_cached integer[], p_reasoning integer[], p_recon boolean[], p_upstream integer[],
  p_error text[],
  p_token text[], p_grant text[], p_user text[], p_client text[], p_provider text[],
  p_model text[], p_endpoint text[], p_streamed boolean[], p_amount bigint[],
  p_tokens integer[], p_basis double precision[], p_downgraded text[], p_instance text[],
  p_start double precision[], p_expires double precision[], p_cap bigint[], p_need bigint[],
  OUT o_spent bigint[], OUT o_reserved bigint[]
) LANGUAGE plpgsql AS $$
DECLARE
  n integer := coalesce(array_length(p_kind, 1), 0);
  commit_mode text := current_setting('synchronous_commit');
  held boolean := false;
  v_spent bigint; v_reserved bigint;
BEGIN
  o_spent := array_fill(NULL::bigint, ARRAY[n]);
  o_reserved := array_fill(NULL::bigint, ARRAY[n]);
  FOR i IN 1 .. n LOOP
    v_spent := NULL; v_reserved := NULL;
    IF p_kind[i] = 0 THEN
      SELECT s.spent, s.reserved INTO v_spent, v_reserved
        FROM keyfob_settle_one(p_id[i], p_status[i], p_cost[i], p_source[i], p_input[i],
          p_output[i], p_cached[i], p_reasoning[i], p_recon[i], p_upstream[i], p_error[i],
          p_now[i], p_scope[i], p_key[i]) s;
    ELSE
      SELECT r.spent, r.reserved INTO v_spent, v_reserved
        FROM keyfob_reserve_one(p_id[i], p_token[i], p_grant[i], p_user[i], p_client[i],
          p_provider[i], p_model[i], p_endpoint[i], p_streamed[i], p_amount[i], p_tokens[i],
          p_now[i], p_basis[i], p_downgraded[i], p_instance[i], p_scope[i], p_key[i],
          p_start[i], p_expires[i], p_cap[i], p_need[i]) r;
      held := held OR v_reserved IS NOT NULL;
    END IF;
    o_spent[i] := v_spent;
    o_reserved[i] := v_reserved;
  END LOOP;
  IF held THEN
    PERFORM set_config('synchronous_commit', commit_mode, true);
  END IF;
END
$$;

-- A common-case reservation committed without waiting for the WAL flush
-- (db_reservation_durability = commit) and lost with it to a crash of PostgreSQL
-- itself, put back by the gateway that made it (store/metering/pg_replays.py) when it
-- finds its connections lost: its call may be upstream, so the hold and the ledger row
-- come back as keyfob_reserve_one made them, whatever the cap and the token say now
-- (the money may be spent already; the settlement that follows moves it as usual). It
-- takes keyfob_reserve_one's arguments. A row the ledger has, in any status, is left
-- alone: the reservation was not lost, or was settled since. Returns whether it put the
-- reservation back. Its own commit waits for the flush (the session's setting).
CREATE OR REPLACE FUNCTION keyfob_restore_one(
  p_entry_id text, p_token_hash text, p_grant_id text, p_user_id text, p_client_id text,
  p_provider_id text, p_model text, p_endpoint text, p_streamed boolean,
  p_amount bigint, p_tokens integer, p_now double precision, p_basis double precision,
  p_downgraded_from text, p_instance_id text,
  p_scope text, p_key text, p_start double precision, p_expires double precision,
  p_cap bigint, p_need bigint
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM ledger WHERE id = p_entry_id;
  IF FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO counters AS c (scope, key, spent, reserved, seeded_for, expires_at)
  VALUES (p_scope, p_key, 0, p_need, p_basis, p_expires)
  ON CONFLICT (scope, key) DO UPDATE SET reserved = c.reserved + excluded.reserved;
  INSERT INTO ledger (id, grant_id, user_id, client_id, provider_id, model, endpoint,
                      streamed, status, reserved_micro_usd, window_keys_json,
                      needs_reconciliation, created_at, tokens_reserved, from_wallet,
                      downgraded_from, instance_id)
  VALUES (p_entry_id, p_grant_id, p_user_id, p_client_id, p_provider_id, p_model,
          p_endpoint, p_streamed, 'reserved', p_amount, to_json(ARRAY[p_key])::text,
          false, p_now, p_tokens, false, p_downgraded_from, p_instance_id);
  RETURN true;
END
$$;
