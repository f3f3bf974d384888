//! The keys that a reload (SIGHUP) cannot change in a running daemon.
//!
//! The replication session, the queue connections, the operations endpoint
//! and the table mapping are set up once at start. A reload keeps their
//! values and reports the keys whose value the file changed, so the operator
//! knows that a restart is needed. Every other key applies live.

use super::Config;

/// Keys whose new value applies only after a restart, in the order they are
/// compared.
pub const RESTART_KEYS: &[&str] = &[
    "source.url",
    "source.password_file",
    "source.publication",
    "source.slot",
    "source.status_interval",
    "queue.url",
    "queue.schema",
    "http.listen",
    "tables.jobs",
    "tables.chats",
    "tables.hes_scores",
    "tables.tickets",
    "subscriptions",
];

/// Returns `new` with every key of [`RESTART_KEYS`] set back to its value in
/// `running`, and the keys whose value differed.
///
/// The password read from `source.password_file` is taken from `new`, so
/// connections opened after the reload use it, unless the file's path
/// changed: then the running password stays with the running path.
pub fn keep_restart_keys(running: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let mut changed = Vec::new();
    let mut keep = |key: &'static str, differs: bool| {
        if differs {
            changed.push(key);
        }
        differs
    };

    if keep("source.url", running.source.url != new.source.url) {
        new.source.url.clone_from(&running.source.url);
    }
    if keep(
        "source.password_file",
        running.source.password_file != new.source.password_file,
    ) {
        new.source
            .password_file
            .clone_from(&running.source.password_file);
        new.source.password.clone_from(&running.source.password);
    }
    if keep(
        "source.publication",
        running.source.publication != new.source.publication,
    ) {
        new.source
            .publication
            .clone_from(&running.source.publication);
    }
    if keep("source.slot", running.source.slot != new.source.slot) {
        new.source.slot.clone_from(&running.source.slot);
    }
    if keep(
        "source.status_interval",
        running.source.status_interval != new.source.status_interval,
    ) {
        new.source.status_interval = running.source.status_interval;
    }
    if keep("queue.url", running.queue.url != new.queue.url) {
        new.queue.url.clone_from(&running.queue.url);
    }
    if keep("queue.schema", running.queue.schema != new.queue.schema) {
        new.queue.schema.clone_from(&running.queue.schema);
    }
    if keep("http.listen", running.http.listen != new.http.listen) {
        new.http.listen = running.http.listen;
    }
    if keep("tables.jobs", running.tables.jobs != new.tables.jobs) {
        new.tables.jobs.clone_from(&running.tables.jobs);
    }
    if keep("tables.chats", running.tables.chats != new.tables.chats) {
        new.tables.chats.clone_from(&running.tables.chats);
    }
    if keep(
        "tables.hes_scores",
        running.tables.hes_scores != new.tables.hes_scores,
    ) {
        new.tables.hes_scores.clone_from(&running.tables.hes_scores);
    }
    if keep(
        "tables.tickets",
        running.tables.tickets != new.tables.tickets,
    ) {
        new.tables.tickets.clone_from(&running.tables.tickets);
    }
    if keep("subscriptions", running.subscriptions != new.subscriptions) {
        new.subscriptions.clone_from(&running.subscriptions);
    }
    (new, changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const CONFIG: &str = r#"
[source]
url = "postgres://walhook@127.0.0.1/app"
slot = "walhook"

[delivery]
timeout = "5s"

[tables.jobs]
table = "public.jobs"
id = "id"
account = "account_id"
company = "company_id"
stage = "stage_id"
stage_changed_at = "stage_changed_at"

[subscriptions]
table = "public.webhook_subscriptions"
id = "id"
company = "company_id"
program = "program_id"
url = "url"
secret = "secret"
events = "events"
enabled = "enabled"
"#;

    fn parse(text: &str) -> Config {
        load_str(text).expect("test config is valid")
    }

    #[test]
    fn live_keys_apply() {
        let running = parse(CONFIG);
        let new = parse(&CONFIG.replace("timeout = \"5s\"", "timeout = \"9s\""));
        let (applied, changed) = keep_restart_keys(&running, new);
        assert!(changed.is_empty(), "{changed:?}");
        assert_eq!(applied.delivery.timeout, std::time::Duration::from_secs(9));
    }

    #[test]
    fn restart_keys_keep_running_value() {
        let running = parse(CONFIG);
        let new = parse(
            &CONFIG
                .replace("slot = \"walhook\"", "slot = \"other\"")
                .replace("stage = \"stage_id\"", "stage = \"phase\""),
        );
        let (applied, changed) = keep_restart_keys(&running, new);
        assert_eq!(changed, ["source.slot", "tables.jobs"]);
        assert_eq!(applied.source.slot, "walhook");
        assert_eq!(applied.tables.jobs.stage, "stage_id");
    }

    #[test]
    fn every_restart_key_is_listed() {
        let running = parse(CONFIG);
        let new = parse(&CONFIG.replace("127.0.0.1/app", "127.0.0.2/app"));
        let (_, changed) = keep_restart_keys(&running, new);
        assert!(changed.iter().all(|key| RESTART_KEYS.contains(key)));
        assert_eq!(changed, ["source.url"]);
    }
}
