//! A declared event shape end to end (issue 16, "event shapes are contracts too"): orders keyed
//! by `order_id` and timestamped by `updated_at`, not growth events, through `http_source` with
//! `shape:` into `postgres_sink` with `mode: upsert` on the business key — against the real
//! broker and PostgreSQL; and tickets, a shape using the options the default growth shape is
//! written with (lifted `fields`, `payload: rest`, a `source` pointer, two event-time pointers,
//! a `derived_key` layout).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const KEY: &str = "orders-key-0123456789abcdef";
const ORDERS: usize = 300;
const STATUSES: [&str; 3] = ["placed", "paid", "shipped"];

/// Order `i` in status `s` (index into STATUSES), its time written with a +02:00 offset.
fn order(run: &str, i: usize, s: usize) -> Value {
    json!({
        "order_id": format!("{run}-{i}"),
        "status": STATUSES[s],
        "amount": i as f64 + 0.25,
        "updated_at": format!("2026-12-02T{:02}:{:02}:{:02}+02:00", 12 + s, i / 60, i % 60),
        "lines": [{"sku": "A", "qty": 1 + i % 3}],
    })
}

/// The UTC instant of `order(run, i, s)`'s `updated_at`, as PostgreSQL prints it in UTC.
fn utc(i: usize, s: usize) -> String {
    format!("2026-12-02 {:02}:{:02}:{:02}+00", 10 + s, i / 60, i % 60)
}

async fn post(addr: &str, body: &Value) -> Resp {
    post_events(addr, KEY, body).await
}

/// Posts `body`, asserts 202 and returns the idempotency keys, one per event.
async fn accepted_keys(addr: &str, body: &Value) -> Vec<String> {
    let r = post(addr, body).await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["idempotency_keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k.as_str().expect("key").to_string())
        .collect()
}

/// Starts connectd with an `http_source` named `name` writing to `topic` (`source`: its further
/// settings, indented under it) and the connectors of `rest`; returns once the source listens,
/// with its address.
async fn start(
    dir: &std::path::Path,
    name: &str,
    topic: &str,
    source: &str,
    rest: &str,
    env: &[(&str, String)],
) -> (Connectd, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = write_file(
        dir,
        "c.yaml",
        &format!(
            "{CONFIG_HEAD}  - name: {name}
    type: http_source
    output: {topic}
    listen: {addr}
    static_keys: [ {{ name: shop, key: {KEY} }} ]
{source}{rest}"
        ),
    );
    let c = Connectd::start(&cfg, &dir.join("log"), env);
    let started = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "http_source never listened; log:\n{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (c, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_shape_is_ingested_keyed_by_order_and_upserted_on_its_business_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let run = unique("ord");
    let topic = unique("orders");
    let table = format!("orders_{}", unique("t").replace('-', "_"));
    create_topic(&topic, 3).await;
    let pool = pg().await;
    sqlx::query(&format!(
        "CREATE TABLE {table} (order_id text PRIMARY KEY, status text NOT NULL, amount numeric NOT NULL,
         last_event_at timestamptz NOT NULL, idempotency_key text NOT NULL, payload jsonb NOT NULL)"
    ))
    .execute(&pool)
    .await
    .expect("create table");
    let schema = write_file(
        dir.path(),
        "order.json",
        &json!({
            "type": "object",
            "required": ["order_id", "status", "amount", "updated_at"],
            "properties": {
                "order_id": {"type": "string", "minLength": 1},
                "status": {"enum": STATUSES},
                "amount": {"type": "number", "minimum": 0},
                "updated_at": {"type": "string"}
            }
        })
        .to_string(),
    );
    let (c, addr) = start(
        dir.path(),
        "orders-in",
        &topic,
        &format!(
            r#"    partition_key: [/order_id]
    schema_file: {schema}
    shape:
      event_type: order
      event_time: /updated_at
      idempotency_fields: [/order_id, /status]
"#,
            schema = schema.display()
        ),
        &format!(
            r#"  - name: orders-store
    type: postgres_sink
    input: {topic}
    group_id: {run}-store
    database_url: ${{DATABASE_URL}}
    table: {table}
    mode: upsert
    conflict: [order_id]
    columns:
      order_id: {{ from: /payload/order_id, type: text }}
      status: {{ from: /payload/status, type: text }}
      amount: {{ from: /payload/amount, type: numeric }}
      last_event_at: {{ from: /event_ts, type: timestamptz }}
      idempotency_key: {{ from: /idempotency_key, type: text }}
      payload: {{ from: /payload, type: jsonb }}
    batch: {{ max_records: 500, linger: 20ms }}
"#
        ),
        &[("DATABASE_URL", database_url())],
    )
    .await;

    // Invalid orders: each named by index and pointer, nothing of the request accepted.
    let mut no_id = order(&run, 0, 0);
    no_id.as_object_mut().expect("obj").remove("order_id");
    let mut local_time = order(&run, 0, 0);
    local_time["updated_at"] = json!("2026-12-02T12:00:00");
    let mut no_amount = order(&run, 0, 0);
    no_amount.as_object_mut().expect("obj").remove("amount");
    let growth = json!({"user_id": uuid::Uuid::new_v4().to_string(), "event_type": "signup", "client_timestamp": "2026-12-02T10:00:00Z"});
    let r = post(
        &addr,
        &json!([order(&run, 0, 0), no_id, local_time, no_amount, growth]),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let errors = r.json()["errors"].as_array().cloned().expect("errors");
    let at = |i: u64| r.errors_at(i);
    assert!(at(0).is_empty(), "{errors:?}");
    assert!(
        at(1).iter().any(|e| e.starts_with("/order_id is required")),
        "{:?}",
        at(1)
    );
    assert!(
        at(2)
            .iter()
            .any(|e| e
                .starts_with("/updated_at must be an RFC 3339 timestamp with an explicit offset")),
        "{:?}",
        at(2)
    );
    assert!(at(3).iter().any(|e| e.contains("amount")), "{:?}", at(3));
    assert!(
        at(4).iter().any(|e| e.starts_with("/order_id is required")),
        "a growth event is not an order: {:?}",
        at(4)
    );

    // Every order placed (sent twice: a client retry without Idempotency-Key), paid, shipped;
    // one status is acknowledged for all orders before the next is sent.
    let mut keys: HashMap<(usize, usize), String> = HashMap::new();
    for s in 0..STATUSES.len() {
        for attempt in 0..(if s == 0 { 2 } else { 1 }) {
            for chunk in (0..ORDERS).collect::<Vec<_>>().chunks(100) {
                let body = Value::Array(chunk.iter().map(|&i| order(&run, i, s)).collect());
                for (&i, k) in chunk.iter().zip(accepted_keys(&addr, &body).await) {
                    assert_eq!(k.len(), 64, "a derived key");
                    if attempt == 0 {
                        keys.insert((i, s), k);
                    } else {
                        assert_eq!(keys[&(i, s)], k, "a retry derives the same key");
                    }
                }
            }
        }
    }
    let distinct: std::collections::HashSet<&String> = keys.values().collect();
    assert_eq!(
        distinct.len(),
        ORDERS * STATUSES.len(),
        "status changes are distinct events"
    );

    // The topic: keyed by order id, one order's events in one partition, in the order sent.
    let expected = ORDERS * (STATUSES.len() + 1);
    let got = read_all(&topic, expected, Duration::from_secs(60)).await;
    assert_eq!(got.len(), expected);
    let mut per_order: HashMap<String, Vec<(i32, i64, String)>> = HashMap::new();
    for rec in &got {
        let v: Value = serde_json::from_str(&rec.value).expect("json");
        assert_eq!(v["event_type"], "order");
        assert_eq!(v["source"], "shop");
        let id = v["payload"]["order_id"]
            .as_str()
            .expect("order_id")
            .to_string();
        per_order.entry(id).or_default().push((
            rec.partition,
            rec.offset,
            v["payload"]["status"].as_str().expect("status").to_string(),
        ));
    }
    assert_eq!(per_order.len(), ORDERS);
    for (id, mut evs) in per_order {
        evs.sort_by_key(|e| e.1);
        assert!(evs.iter().all(|e| e.0 == evs[0].0), "{id}: one partition");
        let statuses: Vec<&str> = evs.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(statuses, ["placed", "placed", "paid", "shipped"], "{id}");
    }

    // The table: one row per order, its last status, the event time in UTC, amount as sent.
    let start = Instant::now();
    loop {
        let shipped: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE status = 'shipped'"
        ))
        .fetch_one(&pool)
        .await
        .expect("count");
        if shipped == ORDERS as i64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{shipped} of {ORDERS} shipped; log:\n{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows: Vec<(String, String, String, String, String, i64)> = sqlx::query_as(&format!(
        "SELECT order_id, status, amount::text, to_char(last_event_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00',
                idempotency_key, (payload->'lines'->0->>'qty')::bigint FROM {table}"
    ))
    .fetch_all(&pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), ORDERS);
    for (id, status, amount, at, key, qty) in rows {
        let i: usize = id
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("index");
        assert_eq!(status, "shipped");
        assert_eq!(amount, format!("{}", i as f64 + 0.25));
        assert_eq!(at, utc(i, 2), "{id}");
        assert_eq!(key, keys[&(i, 2)]);
        assert_eq!(qty, 1 + (i % 3) as i64);
    }
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .expect("drop");
}

/// Ticket `i` of account `a`: the account id nested, the time under either of two names.
fn ticket(run: &str, a: usize, i: usize) -> Value {
    let time = format!("2026-12-03T{:02}:{:02}:00+01:00", 10 + a % 10, i);
    let mut t = json!({
        "ticket_id": format!("{run}-{a}-{i}"),
        "account": {"id": format!("{run}-acct-{a}")},
        "origin": if a % 2 == 0 { "mail" } else { "chat" },
        "payload": {"subject": format!("help {i}")},
        "priority": i % 3,
        "trace_id": "client-chosen-and-dropped",
    });
    t[if i % 2 == 0 {
        "opened_at"
    } else {
        "created_at"
    }] = json!(time);
    t
}

/// The options the growth shape is written with (`fields` lifted into the envelope,
/// `payload: rest`, a `source` pointer, a list of event-time pointers, a `derived_key` layout
/// naming envelope fields), on a shape of their own, through `http_source` and the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifted_fields_rest_payload_and_a_derived_key_layout_are_configuration() {
    const ACCOUNTS: usize = 40;
    const PER_ACCOUNT: usize = 5;
    let dir = tempfile::tempdir().expect("tmp");
    let run = unique("tkt");
    let topic = unique("tickets");
    create_topic(&topic, 4).await;
    let (c, addr) = start(
        dir.path(),
        "tickets-in",
        &topic,
        r#"    partition_key: [account_id]
    shape:
      event_type: ticket
      event_time: [/opened_at, /created_at]
      fields:
        account_id: { pointer: /account/id }
      source: /origin
      payload: rest
      derived_key: [source, account_id, /ticket_id, event_ts]
"#,
        "",
        &[],
    )
    .await;

    let mut no_account = ticket(&run, 0, 0);
    no_account["account"] = json!({});
    let mut no_time = ticket(&run, 0, 0);
    no_time.as_object_mut().expect("obj").remove("opened_at");
    let mut bad_origin = ticket(&run, 0, 0);
    bad_origin["origin"] = json!(7);
    let r = post(
        &addr,
        &json!([ticket(&run, 0, 0), no_account, no_time, bad_origin]),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.errors_at(0).is_empty(), "{}", r.body);
    assert_eq!(r.errors_at(1), ["/account/id is required"]);
    assert_eq!(
        r.errors_at(2),
        ["/opened_at is required (RFC 3339 with an offset or Z)"]
    );
    assert_eq!(
        r.errors_at(3),
        ["/origin must be a string of 1 to 200 characters"]
    );

    // Every ticket sent twice (a client retry): the second copy derives the same key.
    let mut keys: HashMap<(usize, usize), String> = HashMap::new();
    for attempt in 0..2 {
        for a in 0..ACCOUNTS {
            let body = Value::Array((0..PER_ACCOUNT).map(|i| ticket(&run, a, i)).collect());
            for (i, k) in accepted_keys(&addr, &body).await.into_iter().enumerate() {
                if attempt == 0 {
                    keys.insert((a, i), k);
                } else {
                    assert_eq!(keys[&(a, i)], k, "a retry derives the same key");
                }
            }
        }
    }
    let distinct: std::collections::HashSet<&String> = keys.values().collect();
    assert_eq!(distinct.len(), ACCOUNTS * PER_ACCOUNT);

    let expected = 2 * ACCOUNTS * PER_ACCOUNT;
    let got = read_all(&topic, expected, Duration::from_secs(60)).await;
    assert_eq!(got.len(), expected, "log:\n{}", c.log_text());
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for rec in &got {
        let v: Value = serde_json::from_str(&rec.value).expect("json");
        let acct = v["account_id"]
            .as_str()
            .expect("account_id lifted")
            .to_string();
        assert_eq!(rec.key, acct, "the partition key is the lifted field");
        assert_eq!(
            *partition_of.entry(acct.clone()).or_insert(rec.partition),
            rec.partition,
            "{acct}: one partition"
        );
        let a: usize = acct
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("index");
        let i: usize = v["payload"]["subject"]
            .as_str()
            .and_then(|s| s.strip_prefix("help "))
            .and_then(|n| n.parse().ok())
            .expect("subject");
        assert_eq!(v["event_type"], "ticket");
        assert_eq!(v["source"], if a % 2 == 0 { "mail" } else { "chat" });
        assert_eq!(
            v["event_ts"],
            format!("2026-12-03T{:02}:{:02}:00.000000Z", 9 + a % 10, i)
        );
        assert_eq!(v["trace_id"].as_str().map(str::len), Some(32), "{v}");
        assert_eq!(
            v["payload"],
            json!({"subject": format!("help {i}"), "ticket_id": format!("{run}-{a}-{i}"), "priority": i % 3}),
            "rest: /payload plus what the shape does not read"
        );
        assert_eq!(v["idempotency_key"], keys[&(a, i)].as_str());
    }
    assert_eq!(partition_of.len(), ACCOUNTS);
}
