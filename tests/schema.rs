//! Schema fingerprints cover the types' structure (issue 24 item 1): two
//! versions of one service (same wire name `Billing`), whose types differ
//! only inside, where postcard would decode garbage or fail confusingly.
//! Every changed method gives `Error::SchemaMismatch` naming it; the
//! unchanged one calls fine. On both brokers.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use mqrpc::{ClientOptions, Error};
use mqrpc_tests::TestBroker;

mqrpc_tests::on_both_brokers!(
    each_change_inside_a_type_is_a_schema_mismatch_naming_the_method,
    identical_types_call_fine_and_every_place_shows_one_fingerprint,
    a_stream_refused_before_it_ran_gives_the_refusal,
);

/// The server's version.
mod v1 {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct ChargeRequest {
        pub customer_id: u64,
        pub amount: i64,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Refund {
        pub order: u64,
        pub amount: u64,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Note {
        pub text: String,
        pub author: String,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub enum Problem {
        NotFound,
        Denied,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Invoice {
        pub lines: Vec<Line>,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Line {
        pub item: Item,
        pub discount: Option<u8>,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Item {
        pub sku: String,
        pub quantity: u32,
    }

    /// Identical in both versions.
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Customer {
        pub id: u64,
        pub tags: Vec<String>,
    }

    #[mqrpc::service(name = "Billing")]
    pub trait Billing {
        async fn charge(&self, request: ChargeRequest) -> u64;
        async fn refund(&self, refund: Refund) -> u64;
        async fn annotate(&self, note: Note) -> String;
        async fn find(&self, id: u64) -> Result<Customer, Problem>;
        async fn total(&self, invoice: Invoice) -> u64;
        async fn watch(&self, id: u64) -> mqrpc::Stream<Problem>;
        async fn customer(&self, customer: Customer) -> Customer;
    }

    pub struct Books;

    impl Billing for Books {
        async fn charge(&self, request: ChargeRequest) -> u64 {
            request.customer_id
        }
        async fn refund(&self, refund: Refund) -> u64 {
            refund.amount
        }
        async fn annotate(&self, note: Note) -> String {
            note.author
        }
        async fn find(&self, _id: u64) -> Result<Customer, Problem> {
            Err(Problem::Denied)
        }
        async fn total(&self, invoice: Invoice) -> u64 {
            invoice
                .lines
                .iter()
                .map(|l| u64::from(l.item.quantity))
                .sum()
        }
        async fn watch(&self, _id: u64) -> mqrpc::Stream<Problem> {
            mqrpc::Stream::iter([Problem::NotFound, Problem::Denied])
        }
        async fn customer(&self, customer: Customer) -> Customer {
            customer
        }
    }
}

/// The client's version: each method's types changed in one way.
mod v2 {
    use serde::{Deserialize, Serialize};

    /// (a) A field type change: `u64` to `i64` (postcard reads 42 as 21).
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct ChargeRequest {
        pub customer_id: i64,
        pub amount: i64,
    }

    /// (b) An added field.
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Refund {
        pub order: u64,
        pub amount: u64,
        pub coupon: Option<String>,
    }

    /// (c) A removed field.
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Note {
        pub text: String,
    }

    /// (d) A renamed variant (in an error type and in a stream's items).
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub enum Problem {
        NotFound,
        Forbidden,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Invoice {
        pub lines: Vec<Line>,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Line {
        pub item: Item,
        pub discount: Option<u8>,
    }

    /// (e) A change deep inside: `Invoice.lines[].item.quantity`.
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Item {
        pub sku: String,
        pub quantity: u16,
    }

    pub use super::v1::Customer;

    #[mqrpc::service(name = "Billing")]
    pub trait Billing {
        async fn charge(&self, request: ChargeRequest) -> u64;
        async fn refund(&self, refund: Refund) -> u64;
        async fn annotate(&self, note: Note) -> String;
        async fn find(&self, id: u64) -> Result<Customer, Problem>;
        async fn total(&self, invoice: Invoice) -> u64;
        async fn watch(&self, id: u64) -> mqrpc::Stream<Problem>;
        async fn customer(&self, customer: Customer) -> Customer;
    }
}

fn options() -> ClientOptions {
    ClientOptions::default().timeout(Duration::from_secs(10))
}

/// `method` of the error, if it is a schema mismatch between two fingerprints.
fn mismatch_of(error: Error) -> (String, String, String) {
    match error {
        Error::SchemaMismatch {
            method,
            client,
            server,
        } => {
            assert_ne!(client, server);
            assert_eq!((client.len(), server.len()), (16, 16));
            (method, client, server)
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
}

async fn each_change_inside_a_type_is_a_schema_mismatch_naming_the_method(broker: TestBroker) {
    let conn = broker.connect().await;
    let _server = v1::BillingServer::new(v1::Books)
        .serve(&conn)
        .await
        .unwrap();
    let client = v2::BillingClient::with_options(&conn, options())
        .await
        .unwrap();

    let charge = v2::ChargeRequest {
        customer_id: 42,
        amount: 100,
    };
    let refund = v2::Refund {
        order: 7,
        amount: 5,
        coupon: Some("SPRING".into()),
    };
    let note = v2::Note { text: "hi".into() };
    let invoice = v2::Invoice {
        lines: vec![v2::Line {
            item: v2::Item {
                sku: "x".into(),
                quantity: 3,
            },
            discount: None,
        }],
    };
    let mut seen = vec![
        mismatch_of(client.charge(charge.clone()).await.unwrap_err()).0,
        mismatch_of(client.refund(refund).await.unwrap_err()).0,
        mismatch_of(client.annotate(note).await.unwrap_err()).0,
        mismatch_of(client.find(1).await.unwrap_err()).0,
        mismatch_of(client.total(invoice).await.unwrap_err()).0,
    ];
    let mut watch = client.watch(1).await.unwrap();
    seen.push(mismatch_of(watch.next().await.unwrap().unwrap_err()).0);
    assert_eq!(
        seen,
        ["charge", "refund", "annotate", "find", "total", "watch"]
    );

    // Calls in flight together (the client may send them in one batch
    // frame, where the fingerprint rides in each call's Content Type).
    let calls = (0..20).map(|_| client.charge(charge.clone()));
    for outcome in futures_util::future::join_all(calls).await {
        assert_eq!(mismatch_of(outcome.unwrap_err()).0, "charge");
    }
}

async fn identical_types_call_fine_and_every_place_shows_one_fingerprint(broker: TestBroker) {
    let conn = broker.connect().await;
    let _server = v1::BillingServer::new(v1::Books)
        .serve(&conn)
        .await
        .unwrap();
    let v1_client = v1::BillingClient::with_options(&conn, options())
        .await
        .unwrap();
    let v2_client = v2::BillingClient::with_options(&conn, options())
        .await
        .unwrap();
    let customer = v1::Customer {
        id: 3,
        tags: vec!["gold".into()],
    };
    // The unchanged method works from the other version too.
    assert_eq!(
        v2_client.customer(customer.clone()).await.unwrap(),
        customer
    );
    // The same version calls every method fine.
    let charge = v1::ChargeRequest {
        customer_id: 42,
        amount: 100,
    };
    assert_eq!(v1_client.charge(charge).await.unwrap(), 42);
    assert_eq!(v1_client.find(1).await.unwrap(), Err(v1::Problem::Denied));
    let items: Vec<_> = v1_client.watch(1).await.unwrap().collect().await;
    assert_eq!(items.len(), 2);

    // `_info` and the AsyncAPI document show the server's fingerprints, the
    // ones a mismatch reports.
    let (_, client_fp, server_fp) = mismatch_of(
        v2_client
            .charge(v2::ChargeRequest {
                customer_id: 1,
                amount: 1,
            })
            .await
            .unwrap_err(),
    );
    let info: Vec<mqrpc::ServiceInfo> = v1_client
        .with_timeout(Duration::from_millis(500))
        .client()
        .info()
        .await
        .unwrap()
        .map(|(_, info)| info.unwrap())
        .collect()
        .await;
    let schemas: HashMap<String, Option<String>> = info[0]
        .methods
        .iter()
        .map(|m| (m.name.clone(), m.schema.clone()))
        .collect();
    assert_eq!(schemas["charge"].as_deref(), Some(server_fp.as_str()));
    let doc = v1::BillingServer::asyncapi(&mqrpc::asyncapi::AsyncApiOptions::new());
    assert_eq!(
        doc["operations"]["charge"]["x-mqrpc-schema"],
        server_fp.as_str()
    );
    let v2_doc = v2::BillingServer::asyncapi(&mqrpc::asyncapi::AsyncApiOptions::new());
    assert_eq!(
        v2_doc["operations"]["charge"]["x-mqrpc-schema"],
        client_fp.as_str()
    );
    // Unchanged types, one fingerprint in both versions.
    assert_eq!(
        doc["operations"]["customer"]["x-mqrpc-schema"],
        v2_doc["operations"]["customer"]["x-mqrpc-schema"]
    );
    assert_eq!(
        schemas["customer"].as_deref(),
        doc["operations"]["customer"]["x-mqrpc-schema"].as_str()
    );
}

/// A streaming call the server refuses before the method runs (here:
/// arguments that do not decode) ends with that refusal, not with a
/// missing-item protocol error.
async fn a_stream_refused_before_it_ran_gives_the_refusal(broker: TestBroker) {
    let conn = broker.connect().await;
    let _server = v1::BillingServer::new(v1::Books)
        .serve(&conn)
        .await
        .unwrap();
    let client = v1::BillingClient::with_options(&conn, options())
        .await
        .unwrap();
    let mut items = client
        .client()
        .stream::<_, v1::Problem>("watch", "not a u64")
        .await
        .unwrap();
    match items.next().await {
        Some(Err(Error::BadRequest { message })) => assert!(!message.is_empty()),
        other => panic!("expected BadRequest, got {other:?}"),
    }
    assert!(items.next().await.is_none());
}

/// The text behind `charge`'s fingerprint in both versions, and the hex
/// value it gives (FNV-1a 64), as PROTOCOL.md computes them.
#[test]
fn fingerprints_are_the_documented_hash_of_the_documented_text() {
    use mqrpc::protocol::schema::{fingerprint, method_text, type_text};
    let v1_text = method_text(
        "charge",
        &[("request", type_text::<v1::ChargeRequest>().unwrap())],
        "u64",
    );
    assert_eq!(
        v1_text,
        "charge(request: {customer_id: u64, amount: i64}) -> u64"
    );
    let doc = v1::BillingServer::asyncapi(&mqrpc::asyncapi::AsyncApiOptions::new());
    assert_eq!(
        doc["operations"]["charge"]["x-mqrpc-schema"],
        fingerprint(&v1_text).as_str()
    );
    assert_eq!(fingerprint(&v1_text), "3c504fb7011b89a9");
    // Computed once: every call reads the same static string.
    let (first, again) = (
        v1::BillingClient::__mqrpc_schema(0),
        v1::BillingClient::__mqrpc_schema(0),
    );
    assert!(std::ptr::eq(first, again));
    assert_eq!(first, "3c504fb7011b89a9");
}

/// The worked example of PROTOCOL.md ("Schema fingerprints"), through the
/// macro: the generated fingerprint is the documented one.
mod example {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub struct ChargeRequest {
        pub customer_id: u64,
        pub amount: i64,
        pub coupon: Option<String>,
    }

    #[derive(Serialize, Deserialize)]
    pub enum ChargeError {
        Declined { reason: String },
        Unknown,
    }

    #[mqrpc::service]
    pub trait Billing {
        async fn charge(
            &self,
            request: ChargeRequest,
            tags: Vec<String>,
        ) -> Result<u64, ChargeError>;
    }
}

#[test]
fn the_documented_worked_example() {
    let doc = example::BillingServer::asyncapi(&mqrpc::asyncapi::AsyncApiOptions::new());
    assert_eq!(
        doc["operations"]["charge"]["x-mqrpc-schema"],
        "00bf1cf8e6c7ff8b"
    );
    // And the one-line example, `add(a: i64, b: i64) -> i64`, is the
    // test Calculator's `add`.
    let calculator =
        mqrpc_tests::CalculatorServer::<()>::asyncapi(&mqrpc::asyncapi::AsyncApiOptions::new());
    assert_eq!(
        calculator["operations"]["add"]["x-mqrpc-schema"],
        "bb364c15d84acd2c"
    );
}

/// Generic types are traced at their type arguments; a type that cannot be
/// traced counts by its text as written, without whitespace (issue 25:
/// the fingerprint is what PROTOCOL.md says).
mod generic {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub struct Page<T> {
        pub items: Vec<T>,
        pub next: Option<String>,
    }

    #[mqrpc::service]
    pub trait Catalog {
        async fn list(
            &self,
            page: Page<super::v1::Item>,
            raw: Vec<serde_json::Value>,
        ) -> Page<String>;
    }
}

#[test]
fn generic_and_untraceable_types_are_as_documented() {
    let text = "list(page: {items: seq<{sku: string, quantity: u32}>, next: option<string>}, \
                raw: `Vec<serde_json::Value>`) -> {items: seq<string>, next: option<string>}";
    assert_eq!(
        mqrpc::protocol::schema::fingerprint(text),
        "34a914471392655d"
    );
    let doc = generic::CatalogServer::asyncapi(&mqrpc::asyncapi::AsyncApiOptions::new());
    assert_eq!(
        doc["operations"]["list"]["x-mqrpc-schema"],
        "34a914471392655d"
    );
}
