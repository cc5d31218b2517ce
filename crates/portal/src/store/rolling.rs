//! The rule that makes rolling upgrades of a PostgreSQL cluster possible:
//! while one node runs the next release (and has migrated the shared
//! database), the others still run this one, so a migration may only add
//! (tables, nullable columns or columns with a default, indexes). Taking
//! something away or renaming it waits for the release after, when no node
//! of the old code is left ("expand, then contract"). This test module
//! reads every migration after [`BASELINE`] and refuses the statements
//! that break the previous release's queries.

use super::{Engine, migrations};

/// The schema of the first release that promises rolling upgrades; the
/// migrations up to it (0007 renames a column) needed a full stop.
const BASELINE: i64 = 7;

/// The statements of `sql` that an older node's queries could trip on.
fn contract_changes(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ");
    let statements: Vec<String> = without_comments
        .split(';')
        .map(|statement| {
            statement
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_ascii_uppercase()
        })
        .collect();
    // A unique index on a table this migration creates binds no older
    // node: none of them writes that table.
    let created: Vec<String> = statements
        .iter()
        .filter_map(|s| s.strip_prefix("CREATE TABLE "))
        .filter_map(|rest| rest.split([' ', '(']).next())
        .map(str::to_string)
        .collect();
    let on_new_table = |statement: &str| {
        statement.starts_with("CREATE UNIQUE INDEX")
            && statement.split(" ON ").nth(1).is_some_and(|rest| {
                rest.split(['(', ' '])
                    .next()
                    .is_some_and(|table| created.iter().any(|c| c == table))
            })
    };
    statements
        .into_iter()
        .filter(|statement| !on_new_table(statement))
        .filter(|statement| {
            let adds_required_column = statement.contains("ADD COLUMN")
                && statement.contains("NOT NULL")
                && !statement.contains("DEFAULT");
            adds_required_column
                || [
                    "DROP TABLE",
                    "DROP COLUMN",
                    "DROP VIEW",
                    "RENAME",
                    "ALTER COLUMN",
                    "ADD CONSTRAINT",
                    "CREATE UNIQUE INDEX",
                ]
                .iter()
                .any(|breaking| statement.contains(breaking))
        })
        .collect()
}

#[test]
fn migrations_after_the_baseline_only_expand_the_schema() {
    for engine in [Engine::Sqlite, Engine::Postgres] {
        for migration in migrations(engine) {
            if migration.version <= BASELINE {
                continue;
            }
            let breaking = contract_changes(migration.sql.as_ref());
            assert!(
                breaking.is_empty(),
                "migration {} ({:?}) would break nodes of the previous release during a rolling \
                 upgrade: {breaking:?}. Add now, take away in a later release.",
                migration.version,
                engine
            );
        }
    }
}

#[test]
fn the_rule_knows_an_expansion_from_a_contraction() {
    // 0007 renamed a column: exactly why the promise starts after it.
    for engine in [Engine::Sqlite, Engine::Postgres] {
        let seventh = migrations(engine)
            .into_iter()
            .find(|m| m.version == BASELINE)
            .unwrap();
        assert_eq!(
            contract_changes(seventh.sql.as_ref()).len(),
            1,
            "{engine:?}"
        );
    }
    let additive = "-- a comment that says DROP TABLE\n\
                    CREATE TABLE flows (id TEXT PRIMARY KEY, bytes BIGINT NOT NULL);\n\
                    ALTER TABLE sites ADD COLUMN note TEXT;\n\
                    ALTER TABLE sites ADD COLUMN weight BIGINT NOT NULL DEFAULT 1;\n\
                    CREATE INDEX flows_bytes ON flows(bytes);\n\
                    CREATE UNIQUE INDEX flows_one ON flows (id, bytes);";
    assert_eq!(contract_changes(additive), Vec::<String>::new());
    for breaking in [
        "DROP TABLE sites",
        "alter table sites drop column name",
        "ALTER TABLE sites RENAME TO places",
        "ALTER TABLE sites ALTER COLUMN name TYPE BIGINT",
        "ALTER TABLE sites ALTER COLUMN note SET NOT NULL",
        "ALTER TABLE sites ADD COLUMN owner TEXT NOT NULL",
        "ALTER TABLE sites ADD CONSTRAINT one_name UNIQUE (name)",
        "CREATE UNIQUE INDEX site_names ON sites(name)",
    ] {
        assert_eq!(contract_changes(breaking).len(), 1, "{breaking}");
    }
}
