//! Issue 13: the operator's endpoints: prefetch into the cache, remove one
//! entry, prune the cache.

use serde_json::{Value, json};

use crate::support::{FOLDER, TestApp, pattern};
use azaion_loader::ports::StoreError;

/// `POST /prefetch/{name}`: its status and its JSON lines.
async fn prefetch(app: &TestApp, name: &str) -> (u16, Vec<Value>) {
    let r = app
        .post_json(&format!("/prefetch/{name}"), json!({"folder": FOLDER}))
        .await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    if status != 200 {
        return (status, vec![serde_json::from_str(&text).unwrap()]);
    }
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (status, lines)
}

#[tokio::test]
async fn a_prefetched_resource_loads_from_the_cache_with_the_cdn_down() {
    let app = TestApp::logged_in().await;
    let plain = pattern(300_000, 31);
    let (_, big) = app.seed(FOLDER, "warm.bin", &plain);
    let (status, lines) = prefetch(&app, "warm.bin").await;
    assert_eq!(status, 200);
    let last = lines.last().unwrap();
    assert_eq!(last["state"], "done", "{lines:?}");
    assert_eq!(last["bytes_done"], big.len() as u64);
    assert_eq!(last["bytes_total"], big.len() as u64);
    assert_eq!(app.cache.data(FOLDER, "warm.bin").unwrap(), big);

    // Already there: nothing is read again.
    let gets = app.store.gets().len();
    let (_, lines) = prefetch(&app, "warm.bin").await;
    assert_eq!(
        lines,
        [json!({"state": "cached", "bytes_done": big.len(), "bytes_total": big.len()})]
    );
    assert_eq!(app.store.gets().len(), gets);

    // The CDN is down: the load comes from the cache.
    app.store
        .fail_next_gets(100, StoreError::Unavailable("down".into()));
    assert_eq!(app.load_bytes("warm.bin", FOLDER).await, plain);
}

#[tokio::test]
async fn a_prefetch_is_refused_before_any_work_when_it_cannot_be_done() {
    let app = TestApp::spawn().await;
    assert_eq!(prefetch(&app, "x.bin").await.0, 401, "not logged in");
    app.login().await;
    let (status, body) = prefetch(&app, "missing.bin").await;
    assert_eq!(status, 404, "{body:?}");
    assert_eq!(prefetch(&app, "bad%20name").await.0, 400);
    let r = app.post_json("/prefetch/", json!({"folder": FOLDER})).await;
    assert_eq!(r.status(), 400);
    let r = app
        .post_json("/prefetch/x.bin", json!({"folder": "../etc"}))
        .await;
    assert_eq!(r.status(), 400);
    assert!(app.store.gets().is_empty(), "{:?}", app.store.gets());
}

#[tokio::test]
async fn a_prefetched_big_part_that_does_not_decrypt_is_not_kept() {
    let app = TestApp::logged_in().await;
    let (_, big) = app.seed(FOLDER, "bad.bin", &pattern(100_000, 32));
    let mut damaged = big.to_vec();
    *damaged.last_mut().unwrap() ^= 0xff;
    app.store.put_object(FOLDER, "bad.bin.big", damaged);
    let (status, lines) = prefetch(&app, "bad.bin").await;
    assert_eq!(status, 200);
    let last = lines.last().unwrap();
    assert_eq!(last["state"], "error", "{lines:?}");
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .contains("does not decrypt"),
        "{last}"
    );
    assert!(!app.cache.contains(FOLDER, "bad.bin"));
}

#[tokio::test]
async fn removing_an_entry_frees_it_and_the_next_load_reads_the_cdn_again() {
    let app = TestApp::logged_in().await;
    let plain = pattern(50_000, 33);
    let (_, big) = app.seed(FOLDER, "gone.bin", &plain);
    assert_eq!(app.load_bytes("gone.bin", FOLDER).await, plain);
    assert!(app.cache.contains(FOLDER, "gone.bin"));

    let r = app
        .client
        .delete(app.url(&format!("/cache/{FOLDER}/gone.bin")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = TestApp::json(r).await;
    assert_eq!(body["freed_bytes"], big.len() as u64);
    assert_eq!(body["removed"][0]["name"], "gone.bin");
    assert!(!app.cache.contains(FOLDER, "gone.bin"));

    let again = app
        .client
        .delete(app.url(&format!("/cache/{FOLDER}/gone.bin")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    for bad in ["/cache/models/bad%20name", "/cache/..%2Fetc/x.bin"] {
        let r = app.client.delete(app.url(bad)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }

    let gets = app.store.gets().len();
    assert_eq!(app.load_bytes("gone.bin", FOLDER).await, plain);
    assert!(
        app.store.gets().len() > gets,
        "the load did not read the CDN"
    );
}

#[tokio::test]
async fn prune_removes_the_least_recently_used_down_to_a_size_and_the_unused() {
    let app = TestApp::logged_in().await;
    for (i, name) in ["old.bin", "mid.bin", "new.bin"].into_iter().enumerate() {
        app.seed(FOLDER, name, &pattern(10_000, 40 + i as u8));
        app.load_bytes(name, FOLDER).await;
        // Distinct last-use stamps.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let sizes: u64 = ["old.bin", "mid.bin", "new.bin"]
        .iter()
        .map(|n| app.cache.data(FOLDER, n).unwrap().len() as u64)
        .sum();

    let r = app.post_json("/cache/prune", json!({})).await;
    assert_eq!(r.status(), 400);
    // Nothing is an hour old.
    let body = TestApp::json(
        app.post_json("/cache/prune", json!({"unused_for_secs": 3600}))
            .await,
    )
    .await;
    assert_eq!(body["removed"], json!([]));

    // Room for two entries: the oldest goes.
    let keep_two = sizes - app.cache.data(FOLDER, "old.bin").unwrap().len() as u64;
    let r = app
        .post_json("/cache/prune", json!({"max_bytes": keep_two}))
        .await;
    assert_eq!(r.status(), 200);
    let body = TestApp::json(r).await;
    let removed: Vec<&str> = body["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(removed, ["old.bin"]);
    assert!(app.cache.contains(FOLDER, "mid.bin") && app.cache.contains(FOLDER, "new.bin"));

    let body = TestApp::json(app.post_json("/cache/prune", json!({"max_bytes": 0})).await).await;
    assert_eq!(body["removed"].as_array().unwrap().len(), 2);
    assert_eq!(
        TestApp::json(app.get("/cache").await).await["entries"],
        json!([])
    );
}

#[tokio::test]
async fn verify_finds_and_removes_a_damaged_entry_and_keeps_the_rest() {
    let app = TestApp::logged_in().await;
    for name in ["fine.bin", "rotten.bin"] {
        app.seed(FOLDER, name, &pattern(200_000, 50));
        app.load_bytes(name, FOLDER).await;
    }
    app.cache.damage_at(FOLDER, "rotten.bin", 100_000);
    let r = app.post_json("/cache/verify", json!({})).await;
    assert_eq!(r.status(), 200);
    let body = TestApp::json(r).await;
    assert_eq!(body["checked"], 2);
    let damaged = body["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{body}");
    assert_eq!(damaged[0]["name"], "rotten.bin");
    assert!(!app.cache.contains(FOLDER, "rotten.bin"));
    assert!(app.cache.contains(FOLDER, "fine.bin"));
    // Nothing is left to find.
    let again = TestApp::json(app.post_json("/cache/verify", json!({})).await).await;
    assert_eq!(again, json!({"checked": 1, "damaged": []}));
}

#[tokio::test]
async fn a_load_in_progress_is_listed_with_its_bytes_until_it_ends() {
    let app = TestApp::logged_in().await;
    // Larger than what the socket buffers hold: the stream is still running below.
    let plain = pattern(32 << 20, 60);
    app.seed(FOLDER, "long.bin", &plain);
    let transfers =
        || async { TestApp::json(app.get("/transfers").await).await["transfers"].clone() };
    assert_eq!(transfers().await, json!([]));

    let mut response = app.load("long.bin", FOLDER).await;
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().expect("a first chunk");
    let listed = transfers().await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["kind"], "load");
    assert_eq!(listed[0]["resource"], format!("{FOLDER}/long.bin"));
    let done = listed[0]["bytes_done"].as_u64().unwrap();
    assert!(
        done >= first.len() as u64 && done < plain.len() as u64,
        "{done}"
    );

    // Read to the end: the transfer is off the list.
    let mut got = first.len();
    while let Some(chunk) = response.chunk().await.unwrap() {
        got += chunk.len();
    }
    assert_eq!(got, plain.len());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while transfers().await != json!([]) {
        assert!(tokio::time::Instant::now() < deadline, "still listed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
