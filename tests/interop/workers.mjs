// Node BullMQ workers for the host pipeline's three queues, as a TypeScript/Node
// host would run them: analysis, predictions (one per active model) and Kicktipp
// settlement, written straight into the host's PostgreSQL tables (DESIGN §1).
//
// retro enqueues; these workers consume. They are strict about the wire format
// retro must produce (job names, job ids, priority, camelCase payload keys and
// types): anything else fails the job with a "protocol:" reason, so a
// byte-incompatibility shows up as a failed run, never as a silent success.
//
// Environment:
//   DATABASE_URL     libpq URL of the host database (postgresql://user@host:port/db)
//   REDIS_URL        redis://[user:password@]host:port[/db]
//   BULLMQ_PREFIX    BullMQ key prefix (default "bull")
//   ANALYSIS_QUEUE, PREDICTIONS_QUEUE, SETTLEMENT_QUEUE   queue names (defaults below)
//   WORKER_NAME      BullMQ worker name (default "node-host")
//   CONCURRENCY      jobs in parallel per queue (default 2)
//   FAIL_ONCE        "phase:matchId,…": the first execution of that phase for that match
//                    throws Error("node says no") (phase: analysis|predictions|settlement)
//   FAIL_ALWAYS      "phase:matchId,…": every execution throws Error("node says no, always")
//   FAIL_NEVER       "phase:matchId,…": every execution throws BullMQ's
//                    UnrecoverableError("node says never") (retro must not retry it)
//   SHORT_ONCE       "matchId,…": the first predictions job writes only one prediction
//                    and completes (retro must see the data is short and ask again)
//   HANG_ONCE        "phase:matchId,…": the first execution holds the job HANG_SECONDS
//                    (default 2) before doing its work (retro must time it out)
//
// Every execution is journalled in pipeline_job_log when that table exists
// (queue, job name, id, timestamp, attemptsMade, outcome), like retro's
// reference workers do. Prints "ready" on stdout once every worker is connected;
// SIGTERM/SIGINT close the workers (jobs in hand finish) and exit 0.

import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { UnrecoverableError, Worker } from 'bullmq';
import pg from 'pg';

const BULLMQ_VERSION = JSON.parse(
  readFileSync(new URL('./node_modules/bullmq/package.json', import.meta.url), 'utf8'),
).version;

const env = process.env;
const PREFIX = env.BULLMQ_PREFIX || 'bull';
const QUEUES = {
  analysis: env.ANALYSIS_QUEUE || 'analysis-queue',
  predictions: env.PREDICTIONS_QUEUE || 'predictions-queue',
  settlement: env.SETTLEMENT_QUEUE || 'settlement-queue',
};
const JOB_NAMES = { analysis: 'analyze-match', predictions: 'predict-match', settlement: 'settle-match' };
const JOB_IDS = { analysis: 'analyze-retro-', predictions: 'predict-retro-', settlement: 'settle-retro-' };
const PRIORITY = 3;
const SETTLED = new Set(['finished', 'awarded']);

function pairs(text) {
  return new Set((text || '').split(',').map((s) => s.trim()).filter(Boolean));
}
const FAIL_ONCE = pairs(env.FAIL_ONCE);
const FAIL_ALWAYS = pairs(env.FAIL_ALWAYS);
const FAIL_NEVER = pairs(env.FAIL_NEVER);
const SHORT_ONCE = pairs(env.SHORT_ONCE);
const HANG_ONCE = pairs(env.HANG_ONCE);
const HANG_MS = Number(env.HANG_SECONDS || 2) * 1000;

function redisConnection(url) {
  const u = new URL(url);
  if (u.protocol !== 'redis:') throw new Error(`REDIS_URL must be redis://, got ${u.protocol}`);
  return {
    host: u.hostname,
    port: Number(u.port || 6379),
    db: Number(u.pathname.replace('/', '') || 0),
    username: u.username ? decodeURIComponent(u.username) : undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
    maxRetriesPerRequest: null,
  };
}

const pool = new pg.Pool({ connectionString: env.DATABASE_URL, max: 6 });

async function tx(fn) {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  } finally {
    client.release();
  }
}

// --- wire format ---------------------------------------------------------------------

// retro's documented job-id encoding (docs/config.md, "Job-id formats"), written here
// independently: '%', ':' and every control, format, surrogate or separator character
// (Unicode Cc, Cf, Cs, Zs, Zl, Zp) as %XX per UTF-8 byte, upper-case; the rest unchanged.
const ENCODED = /[%:\p{Cc}\p{Cf}\p{Cs}\p{Zs}\p{Zl}\p{Zp}]/u;
function encodeMatchId(matchId) {
  let out = '';
  for (const ch of matchId) {
    out += ENCODED.test(ch)
      ? [...Buffer.from(ch, 'utf8')].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join('')
      : ch;
  }
  return out;
}

class ProtocolError extends Error {
  constructor(message) {
    super(`protocol: ${message}`);
  }
}

function checkJob(phase, job, shape) {
  if (job.name !== JOB_NAMES[phase]) {
    throw new ProtocolError(`job name ${JSON.stringify(job.name)} on ${QUEUES[phase]}`);
  }
  const data = job.data;
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new ProtocolError(`payload is not a JSON object: ${JSON.stringify(data)}`);
  }
  const keys = Object.keys(data).sort();
  const wanted = Object.keys(shape).sort();
  if (JSON.stringify(keys) !== JSON.stringify(wanted)) {
    throw new ProtocolError(`payload keys ${keys} , expected ${wanted}`);
  }
  for (const [key, check] of Object.entries(shape)) {
    if (!check(data[key])) {
      throw new ProtocolError(`payload ${key}=${JSON.stringify(data[key])} is not valid`);
    }
  }
  if (job.id !== JOB_IDS[phase] + encodeMatchId(data.matchId)) {
    throw new ProtocolError(`job id ${job.id} for match ${data.matchId}`);
  }
  if (job.opts.priority !== PRIORITY) {
    throw new ProtocolError(`job priority ${job.opts.priority}, expected ${PRIORITY}`);
  }
  if (job.opts.delay) throw new ProtocolError(`job delay ${job.opts.delay}, expected none`);
  return data;
}

const isId = (v) => typeof v === 'string' && v.length > 0;
const isText = (v) => v === null || typeof v === 'string';
const isGoals = (v) => v === null || (Number.isInteger(v) && v >= 0);
const isTrue = (v) => v === true;

// --- analysis --------------------------------------------------------------------------

function outcome(goalsFor, goalsAgainst) {
  return goalsFor > goalsAgainst ? 'W' : goalsFor < goalsAgainst ? 'L' : 'D';
}

function teamForm(team, history) {
  const games = history
    .filter((m) => m.home_team === team || m.away_team === team)
    .map((m) => {
      const home = m.home_team === team;
      const f = home ? m.home_score : m.away_score;
      const a = home ? m.away_score : m.home_score;
      return { f, a, r: outcome(f, a) };
    });
  const n = games.length;
  const points = games.reduce((s, g) => s + (g.r === 'W' ? 3 : g.r === 'D' ? 1 : 0), 0);
  const scored = n ? games.reduce((s, g) => s + g.f, 0) / n : 1.4;
  const conceded = n ? games.reduce((s, g) => s + g.a, 0) / n : 1.4;
  return {
    ppg: n ? points / n : 1.35,
    form: games.slice(-5).map((g) => g.r).join(''),
    goals: `${scored.toFixed(2)}/${conceded.toFixed(2)}`,
  };
}

async function analyze(job) {
  const data = checkJob('analysis', job, {
    matchId: isId,
    externalId: isText,
    homeTeam: isText,
    awayTeam: isText,
    allowRetroactive: isTrue,
  });
  return tx(async (db) => {
    const { rows } = await db.query(
      'SELECT external_id, home_team, away_team, kickoff_time FROM matches WHERE id = $1',
      [data.matchId],
    );
    if (rows.length === 0) throw new Error(`match ${data.matchId} not found`);
    const match = rows[0];
    if (data.homeTeam !== match.home_team || data.awayTeam !== match.away_team) {
      throw new ProtocolError(`teams ${data.homeTeam}/${data.awayTeam} are not match ${data.matchId}'s`);
    }
    if (data.externalId !== match.external_id) {
      throw new ProtocolError(`externalId ${data.externalId} is not match ${data.matchId}'s`);
    }
    const present = await db.query(
      'SELECT 1 FROM match_analysis WHERE match_id = $1 AND favorite_team_name IS NOT NULL',
      [data.matchId],
    );
    if (present.rowCount > 0) return { written: 0 };
    const kickoff = Date.parse(match.kickoff_time);
    if (Number.isNaN(kickoff)) throw new Error(`unreadable kickoff_time ${match.kickoff_time}`);
    const played = await db.query(
      `SELECT home_team, away_team, home_score, away_score, kickoff_time FROM matches
        WHERE (home_team = ANY($1) OR away_team = ANY($1)) AND status IN ('finished', 'awarded')
          AND home_score IS NOT NULL AND away_score IS NOT NULL`,
      [[match.home_team, match.away_team]],
    );
    const history = played.rows
      .filter((m) => Date.parse(m.kickoff_time) < kickoff)
      .sort((a, b) => Date.parse(a.kickoff_time) - Date.parse(b.kickoff_time));
    const home = teamForm(match.home_team, history);
    const away = teamForm(match.away_team, history);
    const edge = Math.max(-30, Math.min(30, Math.round((home.ppg - away.ppg + 0.15) * 15)));
    const draw = 26;
    const homePct = Math.round((100 - draw) / 2) + edge;
    const awayPct = 100 - draw - homePct;
    const row = {
      favorite_team_name: homePct >= awayPct ? match.home_team : match.away_team,
      home_win_pct: homePct,
      draw_pct: draw,
      away_win_pct: awayPct,
      home_form: home.form,
      away_form: away.form,
      home_goals_avg: home.goals,
      away_goals_avg: away.goals,
    };
    const values = Object.values(row);
    const updated = await db.query(
      `UPDATE match_analysis SET favorite_team_name = $2, home_win_pct = $3, draw_pct = $4,
         away_win_pct = $5, home_form = $6, away_form = $7, home_goals_avg = $8, away_goals_avg = $9
       WHERE match_id = $1`,
      [data.matchId, ...values],
    );
    if (updated.rowCount === 0) {
      await db.query(
        `INSERT INTO match_analysis (id, match_id, favorite_team_name, home_win_pct, draw_pct,
           away_win_pct, home_form, away_form, home_goals_avg, away_goals_avg)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
        [randomUUID(), data.matchId, ...values],
      );
    }
    return { written: 1, favorite: row.favorite_team_name };
  });
}

// --- predictions -----------------------------------------------------------------------

function hash(text) {
  let h = 2166136261;
  for (const c of text) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
  return h;
}

function tip(modelId, matchId, analysis) {
  const h = hash(`${modelId}/${matchId}`);
  const roll = h % 100;
  const big = 1 + ((h >>> 8) % 3);
  const small = (h >>> 12) % big;
  if (roll < analysis.home_win_pct) return [big, small, 'H'];
  if (roll < analysis.home_win_pct + analysis.draw_pct) return [small, small, 'D'];
  return [small, big, 'A'];
}

async function predict(job) {
  const data = checkJob('predictions', job, {
    matchId: isId,
    attempt: (v) => v === 1,
    skipIfDone: isTrue,
    allowRetroactive: isTrue,
  });
  const short = SHORT_ONCE.has(data.matchId) && !(await ranBefore('predictions', data.matchId, 'ok'));
  return tx(async (db) => {
    const analysis = await db.query(
      `SELECT home_win_pct, draw_pct, away_win_pct FROM match_analysis
        WHERE match_id = $1 AND favorite_team_name IS NOT NULL LIMIT 1`,
      [data.matchId],
    );
    if (analysis.rowCount === 0) throw new Error(`match ${data.matchId} has no analysis`);
    const { home_win_pct, draw_pct } = analysis.rows[0];
    const pct = { home_win_pct: home_win_pct ?? 45, draw_pct: draw_pct ?? 27 };
    const missing = await db.query(
      `SELECT m.id FROM models m
        WHERE m.active AND NOT COALESCE(m.auto_disabled, false)
          AND NOT EXISTS (SELECT 1 FROM predictions p WHERE p.match_id = $1 AND p.model_id = m.id)
        ORDER BY m.id`,
      [data.matchId],
    );
    const models = missing.rows.map((r) => r.id).slice(0, short ? 1 : undefined);
    const now = new Date().toISOString();
    let written = 0;
    for (const modelId of models) {
      const [home, away, result] = tip(modelId, data.matchId, pct);
      const inserted = await db.query(
        `INSERT INTO predictions (id, match_id, model_id, predicted_home, predicted_away,
           predicted_result, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7)
         ON CONFLICT (match_id, model_id) DO NOTHING`,
        [randomUUID(), data.matchId, modelId, home, away, result, now],
      );
      written += inserted.rowCount;
    }
    return { written, short };
  });
}

// --- settlement (Kicktipp quota rule) -----------------------------------------------------

function tendency(home, away) {
  return home > away ? 'H' : home < away ? 'A' : 'D';
}

function quota(count, total) {
  if (count === 0) return 6;
  // 6/(10·P) − 0.6 + 2 with P = count/total, rounded half up in integers.
  return Math.max(2, Math.min(6, Math.floor((6 * total + 19 * count) / (10 * count))));
}

async function settle(job) {
  const data = checkJob('settlement', job, {
    matchId: isId,
    homeScore: isGoals,
    awayScore: isGoals,
    status: (v) => typeof v === 'string',
  });
  if (!SETTLED.has(data.status)) throw new Error(`match ${data.matchId} is ${data.status}, not finished`);
  if (data.homeScore === null || data.awayScore === null) {
    throw new Error(`match ${data.matchId} has no final score`);
  }
  return tx(async (db) => {
    const found = await db.query(
      'SELECT home_score, away_score FROM matches WHERE id = $1 FOR UPDATE',
      [data.matchId],
    );
    if (found.rowCount === 0) throw new Error(`match ${data.matchId} not found`);
    const match = found.rows[0];
    if (match.home_score === null || match.away_score === null) {
      await db.query('UPDATE matches SET home_score = $2, away_score = $3, status = $4 WHERE id = $1', [
        data.matchId,
        data.homeScore,
        data.awayScore,
        data.status,
      ]);
    } else if (match.home_score !== data.homeScore || match.away_score !== data.awayScore) {
      throw new Error(
        `match ${data.matchId} is ${match.home_score}-${match.away_score}, settlement says ` +
          `${data.homeScore}-${data.awayScore}`,
      );
    }
    const tips = (
      await db.query(
        `SELECT id, predicted_home, predicted_away, status FROM predictions
          WHERE match_id = $1 AND status <> 'void' ORDER BY id FOR UPDATE`,
        [data.matchId],
      )
    ).rows;
    if (!tips.some((t) => t.status === 'pending')) return { written: 0 };
    const now = new Date().toISOString();
    const valid = tips.filter((t) => t.predicted_home !== null && t.predicted_away !== null);
    const counts = { H: 0, D: 0, A: 0 };
    for (const t of valid) counts[tendency(t.predicted_home, t.predicted_away)] += 1;
    const quotas = {
      H: quota(counts.H, valid.length),
      D: quota(counts.D, valid.length),
      A: quota(counts.A, valid.length),
    };
    const actual = tendency(data.homeScore, data.awayScore);
    let written = 0;
    for (const t of tips) {
      if (t.status !== 'pending') continue;
      if (t.predicted_home === null || t.predicted_away === null) {
        await db.query("UPDATE predictions SET status = 'void', scored_at = $2 WHERE id = $1", [t.id, now]);
        continue;
      }
      let tp = 0;
      let gd = 0;
      let ex = 0;
      if (tendency(t.predicted_home, t.predicted_away) === actual) {
        tp = quotas[actual];
        gd = t.predicted_home - t.predicted_away === data.homeScore - data.awayScore ? 1 : 0;
        ex = t.predicted_home === data.homeScore && t.predicted_away === data.awayScore ? 3 : 0;
      }
      await db.query(
        `UPDATE predictions SET status = 'scored', tendency_points = $2, goal_diff_bonus = $3,
           exact_score_bonus = $4, total_points = $5, scored_at = $6
         WHERE id = $1 AND status = 'pending'`,
        [t.id, tp, gd, ex, tp + gd + ex, now],
      );
      written += 1;
    }
    await db.query('UPDATE matches SET quota_home = $2, quota_draw = $3, quota_away = $4 WHERE id = $1', [
      data.matchId,
      quotas.H,
      quotas.D,
      quotas.A,
    ]);
    return { written };
  });
}

// --- journal and faults ------------------------------------------------------------------

let journal = false;

async function ranBefore(phase, matchId, outcomePrefix) {
  if (!journal) return false;
  const { rowCount } = await pool.query(
    `SELECT 1 FROM pipeline_job_log WHERE queue = $1 AND match_id = $2 AND outcome LIKE $3`,
    [QUEUES[phase], matchId, `${outcomePrefix}%`],
  );
  return rowCount > 0;
}

async function record(phase, job, started, outcomeText) {
  if (!journal) return;
  const matchId = job.data && typeof job.data.matchId === 'string' ? job.data.matchId : null;
  await pool.query(
    `INSERT INTO pipeline_job_log (queue, job_name, job_id, job_timestamp, match_id,
       attempts_made, started_at, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
    [QUEUES[phase], job.name, job.id, job.timestamp, matchId, job.attemptsMade, started, outcomeText],
  );
}

function processor(phase, stage) {
  return async (job) => {
    const started = new Date().toISOString();
    const matchId = job.data && job.data.matchId;
    try {
      // As hosts do: a line in the job's own logs list, {prefix}:{queue}:{jobId}:logs.
      await job.log(`${env.WORKER_NAME || 'node-host'} took ${job.name} for match ${JSON.stringify(matchId)}`);
      if (FAIL_ALWAYS.has(`${phase}:${matchId}`)) throw new Error('node says no, always');
      if (FAIL_NEVER.has(`${phase}:${matchId}`)) throw new UnrecoverableError('node says never');
      if (FAIL_ONCE.has(`${phase}:${matchId}`) && !(await ranBefore(phase, matchId, 'error: node says no'))) {
        throw new Error('node says no');
      }
      if (HANG_ONCE.has(`${phase}:${matchId}`) && !(await ranBefore(phase, matchId, ''))) {
        await new Promise((resolve) => setTimeout(resolve, HANG_MS));
      }
      const result = await stage(job);
      await record(phase, job, started, 'ok');
      return { ...result, by: 'node', bullmq: BULLMQ_VERSION, pid: process.pid };
    } catch (err) {
      const reason = String(err && err.message ? err.message : err).split('\n')[0];
      if (reason.startsWith('protocol:')) console.error(`${job.id}: ${reason}`);
      await record(phase, job, started, `error: ${reason}`).catch((e) =>
        console.error(`could not journal ${job.id}: ${e.message}`),
      );
      // UnrecoverableError as it is: BullMQ must see it to skip its retries (and so
      // must retro, from the stack BullMQ stores).
      throw err instanceof UnrecoverableError ? err : new Error(reason);
    }
  };
}

// --- main ------------------------------------------------------------------------------

async function main() {
  const probe = await pool.query("SELECT to_regclass('pipeline_job_log') IS NOT NULL AS present");
  journal = probe.rows[0].present;
  const connection = redisConnection(env.REDIS_URL || 'redis://127.0.0.1:6379/0');
  const options = {
    connection,
    prefix: PREFIX,
    concurrency: Number(env.CONCURRENCY || 2),
    name: env.WORKER_NAME || 'node-host',
  };
  const stages = { analysis: analyze, predictions: predict, settlement: settle };
  const workers = Object.entries(stages).map(
    ([phase, stage]) => new Worker(QUEUES[phase], processor(phase, stage), options),
  );
  for (const worker of workers) {
    worker.on('error', (err) => console.error(`worker error: ${err.message}`));
    worker.on('failed', (job, err) => console.error(`failed ${job?.id}: ${err.message}`));
    worker.on('completed', (job) => console.log(`completed ${job.id}`));
  }
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  let closing = false;
  const shutdown = async () => {
    if (closing) return;
    closing = true;
    await Promise.all(workers.map((w) => w.close()));
    await pool.end();
    process.exit(0);
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  console.log(`ready bullmq ${BULLMQ_VERSION} prefix ${PREFIX} journal ${journal}`);
}

main().catch((err) => {
  console.error(`workers.mjs: ${err.stack || err}`);
  process.exit(1);
});
