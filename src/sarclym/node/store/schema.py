"""The schema of state.db: every table, as versioned migrations per component.

:class:`~sarclym.node.store.state.StateDB` brings each component to the last version listed here
when it opens the file (:meth:`~sarclym.node.store.state.StateDB.ensure_schema`), in the order of
:data:`COMPONENTS`. ``migrations[i]`` takes a component from version ``i`` to ``i + 1``; a step is
never edited once released, a change is a new step.

======================= =========================================== ==========================
component               tables                                      module
======================= =========================================== ==========================
``receive``             ``series``, ``instances``                   :mod:`.state`
``audit``               ``audit``                                   :mod:`.audit`
``deliveries``          ``delivery_results``, ``deliveries``        :mod:`.deliveries`
``retention``           ``pruned_series``                           :mod:`.retention`
``evaluations``         ``evaluations``                             :mod:`.evaluations`
``feedback``            ``feedback``                                :mod:`.feedback`
``partials``            ``partial_slices``, ``partial_headers``     :mod:`.partials`
``decisions``           ``first_instance_decisions``                :mod:`.decisions`
======================= =========================================== ==========================

Earlier versions of the node created some tables outside this scheme, with ``CREATE ... IF NOT
EXISTS`` and no version row: the delivery ledger (its own connection) the ``audit``,
``delivery_results`` and ``deliveries`` tables, the retention sweep ``pruned_series`` (version 1,
lazily). The first step of those components therefore keeps ``IF NOT EXISTS``: on such a file it
finds the tables in place, rows and all, and only records the version.

One text for SQLite and PostgreSQL: the column types that differ are written as words that
:meth:`~sarclym.node.store.database.Database.ddl` spells per dialect (``@REAL@``: SQLite
``REAL``, PostgreSQL ``DOUBLE PRECISION``, POSIX seconds need 8 bytes; ``@BLOB@``: ``BLOB`` /
``BYTEA``; ``@ID@``: ``INTEGER PRIMARY KEY AUTOINCREMENT`` / an identity column; ``@BIGINT@``:
``INTEGER`` / ``BIGINT``, byte counts). On SQLite each step reads exactly as released. A
:class:`SqliteOnly` step repairs SQLite files from before a feature and is skipped on PostgreSQL.
"""

from __future__ import annotations

__all__ = [
    "AUDIT_MIGRATIONS",
    "COMPONENTS",
    "DECISION_MIGRATIONS",
    "DELIVERY_MIGRATIONS",
    "EVALUATION_MIGRATIONS",
    "FEEDBACK_MIGRATIONS",
    "PARTIALS_MIGRATIONS",
    "RECEIVE_MIGRATIONS",
    "RETENTION_MIGRATIONS",
    "Migrations",
    "SqliteOnly",
]

#: ``migrations[i]``: the SQL statements from version ``i`` to ``i + 1``.
Migrations = tuple[tuple[str, ...], ...]


class SqliteOnly(str):
    """A migration statement for SQLite files only: PostgreSQL skips it (and counts the step).

    For steps that repair rows of SQLite files from before a feature; a PostgreSQL database is
    always created by a node that writes those rows right.
    """

    __slots__ = ()


RECEIVE_MIGRATIONS: Migrations = (
    (
        """CREATE TABLE series (
            series_uid      TEXT PRIMARY KEY,
            study_uid       TEXT NOT NULL,
            modality        TEXT,
            sop_class_uid   TEXT,
            expected_count  INTEGER,           -- NumberOfSlices x NumberOfTimeSlices, or NULL
            indexed_count   INTEGER NOT NULL DEFAULT 0,  -- distinct ImageIndex in 1..expected
            instance_count  INTEGER NOT NULL DEFAULT 0,  -- distinct SOP instances
            byte_count      @BIGINT@ NOT NULL DEFAULT 0,
            first_received  @REAL@ NOT NULL,
            last_received   @REAL@ NOT NULL,     -- any arrival, duplicates included
            status          TEXT NOT NULL,
            status_reason   TEXT,
            status_changed  @REAL@ NOT NULL,
            completed_at    @REAL@
        )""",
        "CREATE INDEX series_by_status ON series (status, last_received)",
        "CREATE INDEX series_by_study ON series (study_uid)",
        """CREATE TABLE instances (
            sop_instance_uid TEXT PRIMARY KEY,
            series_uid       TEXT NOT NULL REFERENCES series (series_uid),
            study_uid        TEXT NOT NULL,
            sop_class_uid    TEXT NOT NULL,
            transfer_syntax  TEXT NOT NULL,
            modality         TEXT,
            image_index      INTEGER,
            path             TEXT NOT NULL,     -- relative to storage.data_dir
            size             @BIGINT@ NOT NULL,
            calling_ae       TEXT,
            received_at      @REAL@ NOT NULL,     -- first arrival
            last_received    @REAL@ NOT NULL,     -- latest arrival (a resend)
            copies           INTEGER NOT NULL DEFAULT 1
        )""",
        "CREATE INDEX instances_by_series ON instances (series_uid, image_index)",
    ),
)

# Version 2 of the audit log: a DONE series of a file from before the audit log has no "done"
# event, only its status reason, which the worker wrote as
# "<label> (P(lymphoma) <p>), model <version>". That text is parsed here, once, into the facts
# the worker now records in the event (sarclym.node.store.records.SeriesResult), so that nothing
# parses a reason at run time. Series with another reason, or with a "done" event that names a
# label, are left alone. Uses SQLite's JSON functions (built in since 3.38; the image's
# Debian bookworm has 3.40).
_P = " (P(lymphoma) "
_MODEL = "), model "
_BACKFILL_DONE = SqliteOnly(f"""
    INSERT INTO audit (at, series_uid, event, actor, detail)
    SELECT status_changed, series_uid, 'done', 'sarclym-node schema migration',
        json_object('reason', reason, 'label', label, 'probability_lymphoma', CAST(p AS REAL),
                    'model_version', substr(rest, 1, instr(rest || ' ', ' ') - 1))
    FROM (
        SELECT series_uid, status_changed, status_reason AS reason,
            substr(status_reason, 1, instr(status_reason, '{_P}') - 1) AS label,
            substr(status_reason, instr(status_reason, '{_P}') + {len(_P)},
                   instr(status_reason, '{_MODEL}') - instr(status_reason, '{_P}') - {len(_P)})
                AS p,
            substr(status_reason, instr(status_reason, '{_MODEL}') + {len(_MODEL)}) AS rest
        FROM series s
        WHERE status = 'done'
          AND instr(status_reason, '{_P}') > 1
          AND instr(status_reason, '{_MODEL}') > instr(status_reason, '{_P}')
          AND NOT EXISTS (
              SELECT 1 FROM audit a WHERE a.series_uid = s.series_uid AND a.event = 'done'
              AND json_extract(a.detail, '$.label') IS NOT NULL
          )
    )
    WHERE label NOT GLOB '*[^A-Za-z0-9_]*' AND p != '' AND p NOT GLOB '*[^0-9.]*'
      AND rest NOT GLOB ' *' AND rest != ''
    ORDER BY status_changed, series_uid
""")

AUDIT_MIGRATIONS: Migrations = (
    (
        """CREATE TABLE IF NOT EXISTS audit (
            id          @ID@,
            at          @REAL@ NOT NULL,
            series_uid  TEXT NOT NULL,
            event       TEXT NOT NULL,
            actor       TEXT NOT NULL,
            detail      TEXT NOT NULL DEFAULT '{}'   -- JSON object
        )""",
        "CREATE INDEX IF NOT EXISTS audit_by_series ON audit (series_uid, at)",
    ),
    (_BACKFILL_DONE,),
)

DELIVERY_MIGRATIONS: Migrations = (
    (
        """CREATE TABLE IF NOT EXISTS delivery_results (
            result_id   TEXT PRIMARY KEY,
            files       TEXT NOT NULL,            -- JSON list of paths, in sending order
            created_at  @REAL@ NOT NULL,
            pruned_at   @REAL@                      -- outbox files removed
        )""",
        """CREATE TABLE IF NOT EXISTS deliveries (
            result_id       TEXT NOT NULL REFERENCES delivery_results(result_id) ON DELETE CASCADE,
            destination     TEXT NOT NULL,
            state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at @REAL@,                 -- NULL unless pending
            last_error      TEXT,
            confirmed       TEXT NOT NULL DEFAULT '[]',  -- JSON list of paths confirmed
            created_at      @REAL@ NOT NULL,
            updated_at      @REAL@ NOT NULL,
            delivered_at    @REAL@,
            PRIMARY KEY (result_id, destination)
        )""",
        "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at)",
    ),
)

RETENTION_MIGRATIONS: Migrations = (
    (
        "CREATE TABLE IF NOT EXISTS pruned_series "
        "(series_uid TEXT PRIMARY KEY, pruned_at @REAL@ NOT NULL)",
    ),
)

#: Local evaluations of model versions (:mod:`.evaluations`).
EVALUATION_MIGRATIONS: Migrations = (
    (
        """CREATE TABLE evaluations (
            id               @ID@,
            model_version    TEXT NOT NULL,
            weights_sha256   TEXT NOT NULL,
            case_set         TEXT NOT NULL,     -- SHA-256 of the sorted (study UID, label) pairs
            n_cases          INTEGER NOT NULL,  -- analysed
            n_refused        INTEGER NOT NULL,  -- labelled but refused, unmatched or ambiguous
            metrics          TEXT NOT NULL,     -- JSON object
            passed           INTEGER NOT NULL CHECK (passed IN (0, 1)),
            report_path      TEXT NOT NULL,
            report_sha256    TEXT NOT NULL,
            run_by           TEXT NOT NULL,     -- OS user
            run_at           @REAL@ NOT NULL      -- POSIX seconds
        )""",
        "CREATE INDEX evaluations_by_version ON evaluations "
        "(model_version, weights_sha256, run_at)",
    ),
)

#: Final diagnoses fed back for results, what the worker saw of each analysed study, the stop
#: rule's reviews and the monitoring figures (:mod:`.feedback`).
FEEDBACK_MIGRATIONS: Migrations = (
    (
        """CREATE TABLE analysed_studies (
            study_uid       TEXT PRIMARY KEY,
            accession_hmac  TEXT,               -- HMAC-SHA256 of AccessionNumber (node key)
            recorded_at     @REAL@ NOT NULL
        )""",
        "CREATE INDEX analysed_by_accession ON analysed_studies (accession_hmac)",
        """CREATE TABLE input_facts (
            series_uid      TEXT PRIMARY KEY,
            study_uid       TEXT NOT NULL,
            at              @REAL@ NOT NULL,
            outcome         TEXT NOT NULL CHECK (outcome IN ('scored', 'refused', 'not_scored')),
            model_version   TEXT,
            facts           TEXT NOT NULL DEFAULT '{}'   -- JSON: scanner, dose, uptake...
        )""",
        "CREATE INDEX input_facts_by_time ON input_facts (at)",
        """CREATE TABLE feedback (
            study_uid   TEXT PRIMARY KEY,
            diagnosis   TEXT NOT NULL
                CHECK (diagnosis IN ('sarcoidosis', 'lymphoma', 'other', 'unknown')),
            actor       TEXT NOT NULL,
            source      TEXT NOT NULL CHECK (source IN ('dashboard', 'import')),
            at          @REAL@ NOT NULL
        )""",
        """CREATE TABLE feedback_history (
            id          @ID@,
            study_uid   TEXT NOT NULL,
            diagnosis   TEXT NOT NULL,
            previous    TEXT,                 -- the value replaced, NULL for the first
            actor       TEXT NOT NULL,
            source      TEXT NOT NULL,
            at          @REAL@ NOT NULL,
            detail      TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX feedback_history_by_study ON feedback_history (study_uid, at)",
        """CREATE TABLE model_reviews (
            model_version   TEXT PRIMARY KEY,
            under_review    INTEGER NOT NULL,
            since           @REAL@ NOT NULL,
            reason          TEXT NOT NULL,
            actor           TEXT NOT NULL,
            figures         TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE model_review_history (
            id              @ID@,
            model_version   TEXT NOT NULL,
            event           TEXT NOT NULL CHECK (event IN ('under_review', 'lifted')),
            at              @REAL@ NOT NULL,
            actor           TEXT NOT NULL,
            reason          TEXT NOT NULL,
            figures         TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE monitoring_figures (
            model_version   TEXT NOT NULL,
            kind            TEXT NOT NULL,        -- concordance, reference
            computed_at     @REAL@ NOT NULL,
            data            TEXT NOT NULL,        -- JSON
            PRIMARY KEY (model_version, kind)
        )""",
    ),
)

#: Each received PET slice's contribution to its series' projections, and one header per series
#: (:mod:`.partials`, :mod:`sarclym.model.imaging.accumulate`): the worker's input without reading
#: the spool. Rows leave when their series is finished.
PARTIALS_MIGRATIONS: Migrations = (
    (
        """CREATE TABLE partial_slices (
            sop_instance_uid TEXT PRIMARY KEY,
            series_uid       TEXT NOT NULL,
            size             @BIGINT@ NOT NULL,   -- bytes of the spooled instance it came from
            data             @BLOB@ NOT NULL,      -- SliceContribution.to_bytes()
            disagrees        INTEGER NOT NULL DEFAULT 0  -- the SOP came again, other content
        )""",
        "CREATE INDEX partial_slices_by_series ON partial_slices (series_uid)",
        """CREATE TABLE partial_headers (
            series_uid       TEXT PRIMARY KEY,
            data             @BLOB@ NOT NULL       -- SeriesHeader.to_bytes(), first instance
        )""",
    ),
)

#: Series refused on their first instance (:mod:`.decisions`, issue 16): the row is written in the
#: transaction that creates the series row, status SKIPPED; later instances of the series join it
#: without being spooled unless ``listener.keep_unanalysed``. A series without a row here was
#: opened for analysis (or before the feature) and is decided at completion.
DECISION_MIGRATIONS: Migrations = (
    (
        """CREATE TABLE first_instance_decisions (
            series_uid       TEXT PRIMARY KEY REFERENCES series (series_uid),
            sop_instance_uid TEXT NOT NULL,      -- the instance the refusal was decided on
            decided_at       @REAL@ NOT NULL
        )""",
    ),
)

#: Every component, in the order :class:`StateDB` migrates them (``audit`` reads ``series``).
COMPONENTS: tuple[tuple[str, Migrations], ...] = (
    ("receive", RECEIVE_MIGRATIONS),
    ("audit", AUDIT_MIGRATIONS),
    ("deliveries", DELIVERY_MIGRATIONS),
    ("retention", RETENTION_MIGRATIONS),
    ("evaluations", EVALUATION_MIGRATIONS),
    ("feedback", FEEDBACK_MIGRATIONS),
    ("partials", PARTIALS_MIGRATIONS),
    ("decisions", DECISION_MIGRATIONS),
)
