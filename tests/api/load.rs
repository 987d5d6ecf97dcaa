//! F2: download through the loader, with the cache, the CDN and failures.

use std::time::Duration;

use serde_json::json;

use crate::support::{FOLDER, TestApp, pattern};
use azaion_loader::adapters::fakes::FakeRoute;
use azaion_loader::app::ranged::CdnReads;
use azaion_loader::domain::cache_record::BLOCK_LEN;
use azaion_loader::ports::{ApiError, Clock, StoreError};

#[tokio::test]
async fn load_returns_the_decrypted_resource_and_fills_the_cache() {
    let app = TestApp::logged_in().await;
    let plain = pattern(300_000, 1);
    let (_, big) = app.seed(FOLDER, "model.onnx", &plain);
    let r = app.load("model.onnx", FOLDER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().await.unwrap().to_vec(), plain);
    assert_eq!(app.cache.data(FOLDER, "model.onnx").unwrap(), big);
}

#[tokio::test]
async fn load_returns_404_when_the_cdn_has_no_big_part() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "m.bin", &pattern(20_000, 7));
    app.store.remove_object(FOLDER, "m.bin.big");
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 404);
    assert!(
        TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("m.bin")
    );
    assert!(!app.cache.contains(FOLDER, "m.bin"));
}

#[tokio::test]
async fn load_returns_404_when_the_api_has_no_small_part() {
    let app = TestApp::logged_in().await;
    assert_eq!(app.load("missing.bin", FOLDER).await.status(), 404);
}

#[tokio::test]
async fn load_returns_401_before_login() {
    let app = TestApp::spawn().await;
    app.seed(FOLDER, "m.bin", &pattern(100, 8));
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 401);
    assert!(
        TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("login")
    );
}

#[tokio::test]
async fn load_returns_403_when_the_api_refuses_the_device() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "m.bin", &pattern(100, 9));
    app.api
        .fail_next(FakeRoute::GetResource, 1, ApiError::DeviceMismatch);
    assert_eq!(app.load("m.bin", FOLDER).await.status(), 403);
}

#[tokio::test]
async fn load_returns_5xx_when_the_api_fails() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "m.bin", &pattern(100, 10));
    app.api.fail_next(
        FakeRoute::GetResource,
        1,
        ApiError::Upstream { status: 500 },
    );
    assert_eq!(app.load("m.bin", FOLDER).await.status(), 502);
    app.api.fail_next(
        FakeRoute::GetResource,
        1,
        ApiError::Unavailable("down".into()),
    );
    assert_eq!(app.load("m.bin", FOLDER).await.status(), 503);
}

#[tokio::test]
async fn load_returns_5xx_when_the_cdn_fails() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "m.bin", &pattern(20_000, 11));
    app.store
        .fail_next_gets(1, StoreError::Unavailable("down".into()));
    assert_eq!(app.load("m.bin", FOLDER).await.status(), 503);
    assert!(!app.cache.contains(FOLDER, "m.bin"));
}

#[tokio::test]
async fn an_expired_token_is_renewed_once_and_the_load_succeeds() {
    let app = TestApp::logged_in().await;
    let plain = pattern(5_000, 12);
    app.seed(FOLDER, "m.bin", &plain);
    app.api.expire_tokens();
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), plain);
    assert_eq!(app.api.calls(FakeRoute::Login), 2);
    assert_eq!(
        app.api.calls(FakeRoute::GetResource),
        3,
        "cdn.yaml, refused call, repeated call"
    );
    assert_eq!(
        TestApp::json(app.get("/status").await).await["authenticated"],
        true
    );
}

#[tokio::test]
async fn a_second_refusal_after_renewal_answers_401_and_status_turns_unauthenticated() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "m.bin", &pattern(100, 13));
    app.api
        .fail_next(FakeRoute::GetResource, 2, ApiError::Unauthorized);
    assert_eq!(app.load("m.bin", FOLDER).await.status(), 401);
    assert_eq!(app.api.calls(FakeRoute::Login), 2, "exactly one renewal");
    assert_eq!(
        TestApp::json(app.get("/status").await).await["authenticated"],
        false
    );
}

#[tokio::test]
async fn a_session_that_failed_its_renewal_works_again_after_a_call_goes_through() {
    let app = TestApp::logged_in().await;
    let plain = pattern(100, 15);
    app.seed(FOLDER, "m.bin", &plain);
    // A 401, then a renewal that cannot reach the API: the session is kept, not working.
    app.api
        .fail_next(FakeRoute::GetResource, 1, ApiError::Unauthorized);
    app.api.fail_next(
        FakeRoute::Login,
        1,
        ApiError::Unavailable("connection refused".into()),
    );
    assert_eq!(app.load("m.bin", FOLDER).await.status(), 503);
    assert_eq!(
        TestApp::json(app.get("/status").await).await["authenticated"],
        false
    );
    // The old token still works: the next call goes through and the session works again.
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), plain);
    assert_eq!(
        TestApp::json(app.get("/status").await).await["authenticated"],
        true
    );
    assert_eq!(app.get("/ready").await.status(), 200);
}

#[tokio::test]
async fn a_call_that_succeeds_with_an_older_session_does_not_vouch_for_the_current_one() {
    let app = std::sync::Arc::new(TestApp::logged_in().await);
    let plain = pattern(100, 16);
    app.seed(FOLDER, "m.bin", &plain);
    let before = app.api.calls(FakeRoute::GetResource);
    // Load A holds the first session, its small-part call stalled.
    app.api.stall_next(
        FakeRoute::GetResource,
        1,
        std::time::Duration::from_millis(1500),
    );
    let slow = {
        let app = app.clone();
        tokio::spawn(async move { app.load("m.bin", FOLDER).await.status() })
    };
    while app.api.calls(FakeRoute::GetResource) == before {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Load B: a 401 and a renewal: a second session, working.
    app.api
        .fail_next(FakeRoute::GetResource, 1, ApiError::Unauthorized);
    assert_eq!(app.load("m.bin", FOLDER).await.status(), 200);
    // Load C: a 401 and a renewal that cannot reach the API: the second session is not working.
    app.api
        .fail_next(FakeRoute::GetResource, 1, ApiError::Unauthorized);
    app.api.fail_next(
        FakeRoute::Login,
        1,
        ApiError::Unavailable("connection refused".into()),
    );
    assert_eq!(app.load("m.bin", FOLDER).await.status(), 503);
    assert_eq!(
        TestApp::json(app.get("/status").await).await["authenticated"],
        false
    );
    // A's call goes through with the first session: that says nothing of the second.
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(
        TestApp::json(app.get("/status").await).await["authenticated"],
        false
    );
}

#[tokio::test]
async fn a_renewal_refused_by_the_api_logs_out() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "m.bin", &pattern(100, 14));
    app.api.expire_tokens();
    app.api.add_user(crate::support::EMAIL, "password changed");
    assert_eq!(app.load("m.bin", FOLDER).await.status(), 401);
    assert_eq!(
        TestApp::json(app.get("/status").await).await["authenticated"],
        false
    );
}

#[tokio::test]
async fn sixteen_concurrent_downloads_are_byte_exact() {
    let app = TestApp::logged_in().await;
    let mut expected = Vec::new();
    for i in 0..4u8 {
        let plain = pattern(200_000 + i as usize * 1000, i);
        app.seed(FOLDER, &format!("c{i}.bin"), &plain);
        expected.push(plain);
    }
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for n in 0..16usize {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let i = n % 4;
            let r = app.load(&format!("c{i}.bin"), FOLDER).await;
            assert_eq!(r.status(), 200);
            (i, r.bytes().await.unwrap().to_vec())
        }));
    }
    for t in tasks {
        let (i, body) = t.await.unwrap();
        assert_eq!(body, expected[i]);
    }
}

#[tokio::test]
async fn concurrent_requests_with_an_expired_token_renew_it_once() {
    let app = std::sync::Arc::new(TestApp::logged_in().await);
    app.seed(FOLDER, "m.bin", &pattern(1000, 15));
    app.api.expire_tokens();
    app.api
        .stall_next(FakeRoute::Login, 1, Duration::from_millis(100));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.load("m.bin", FOLDER).await.status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(app.api.calls(FakeRoute::Login), 2);
}

#[tokio::test]
async fn a_cdn_read_cut_midway_resumes_from_where_it_stopped() {
    let app = TestApp::logged_in().await;
    let plain = pattern(500_000, 16);
    let (_, big) = app.seed(FOLDER, "m.bin", &plain);
    app.store.cut_next_read(100_000);
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), plain);
    assert_eq!(
        app.store.gets(),
        vec![
            ("m.bin.big".to_owned(), 0),
            ("m.bin.big".to_owned(), 100_000)
        ]
    );
    assert_eq!(app.cache.data(FOLDER, "m.bin").unwrap(), big);
}

/// The client sees the load fail (at the request, or in a body that was
/// already under way), never a clean end.
async fn assert_load_fails_midway(app: &TestApp, name: &str) {
    let sent = app
        .client
        .post(app.url(&format!("/load/{name}")))
        .json(&json!({"folder": FOLDER}))
        .send()
        .await;
    match sent {
        Ok(r) => assert!(r.bytes().await.is_err(), "the body must not end cleanly"),
        Err(e) => assert!(!e.is_status(), "{e}"),
    }
}

#[tokio::test]
async fn a_cdn_read_is_resumed_three_times_and_no_more() {
    let app = TestApp::logged_in().await;
    let plain = pattern(500_000, 19);
    app.seed(FOLDER, "m.bin", &plain);
    let big_gets = |app: &TestApp| -> Vec<u64> {
        let gets = app.store.gets().into_iter();
        gets.filter(|(key, _)| key == "m.bin.big")
            .map(|(_, from)| from)
            .collect()
    };
    // Three cuts: three resumes, and the whole resource.
    for _ in 0..3 {
        app.store.cut_next_read(50_000);
    }
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), plain);
    assert_eq!(big_gets(&app), vec![0, 50_000, 100_000, 150_000]);
    assert!(app.cache.contains(FOLDER, "m.bin"));

    // Four cuts of a cold read: the fourth is not resumed, and the body fails.
    app.cache.remove_all_for_test();
    for _ in 0..4 {
        app.store.cut_next_read(50_000);
    }
    assert_load_fails_midway(&app, "m.bin").await;
    assert_eq!(
        big_gets(&app)[4..],
        [0, 50_000, 100_000, 150_000],
        "one read and three resumes"
    );
    assert!(!app.cache.contains(FOLDER, "m.bin"));
}

#[tokio::test]
async fn a_damaged_cdn_big_part_ends_the_body_in_an_error_and_is_not_cached() {
    let app = TestApp::logged_in().await;
    let plain = pattern(30_000, 17);
    let (_, big) = app.seed(FOLDER, "m.bin", &plain);
    let mut bad = big.to_vec();
    let n = bad.len();
    bad[n - 20] ^= 0xff; // the second-to-last block: garbles the padding
    app.store.put_object(FOLDER, "m.bin.big", bad);
    // The damage shows only at the end, after the headers may have gone out.
    assert_load_fails_midway(&app, "m.bin").await;
    assert!(!app.cache.contains(FOLDER, "m.bin"));
}

#[tokio::test]
async fn a_full_cache_disk_still_serves_from_the_cdn() {
    let app = TestApp::logged_in().await;
    let plain = pattern(30_000, 18);
    app.seed(FOLDER, "m.bin", &plain);
    app.cache.set_fail_writes(true);
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), plain);
    assert!(!app.cache.contains(FOLDER, "m.bin"));
}

#[tokio::test]
async fn bad_names_and_folders_answer_400_before_any_io() {
    let app = TestApp::logged_in().await;
    let calls_before = app.api.calls(FakeRoute::GetResource);
    for (name, folder) in [
        ("a%00b", FOLDER),
        ("a%2Fb", FOLDER),
        ("a%5Cb", FOLDER),
        ("bad%20name", FOLDER),
        ("ok.bin", "Bad_Folder"),
        ("ok.bin", "ab"),
        ("ok.bin", "192.168.0.1"),
        ("ok.bin", "../etc"),
        ("ok.bin", ""),
    ] {
        let r = app
            .post_json(&format!("/load/{name}"), json!({"folder": folder}))
            .await;
        assert_eq!(r.status(), 400, "{name} in {folder}");
        assert!(TestApp::json(r).await["detail"].is_string());
    }
    let long = "a".repeat(201);
    assert_eq!(
        app.post_json(&format!("/load/{long}"), json!({"folder": FOLDER}))
            .await
            .status(),
        400
    );
    assert_eq!(app.api.calls(FakeRoute::GetResource), calls_before);
    assert!(app.store.gets().is_empty());
}

#[tokio::test]
async fn a_body_filename_that_differs_from_the_path_answers_400() {
    let app = TestApp::logged_in().await;
    let r = app
        .post_json(
            "/load/a.bin",
            json!({"filename": "b.bin", "folder": FOLDER}),
        )
        .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn shape_is_checked_before_names_and_names_before_login() {
    let app = TestApp::spawn().await;
    // Not logged in, bad name, malformed body → 422 (shape first).
    assert_eq!(
        app.post_json("/load/a%20b", json!({"nofolder": 1}))
            .await
            .status(),
        422
    );
    // Not logged in, bad name, good shape → 400 (names before login).
    assert_eq!(
        app.post_json("/load/a%20b", json!({"folder": FOLDER}))
            .await
            .status(),
        400
    );
    // Not logged in, good everything → 401.
    assert_eq!(
        app.post_json("/load/a.bin", json!({"folder": FOLDER}))
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn an_oversized_json_body_is_refused() {
    let app = TestApp::spawn().await;
    let huge = "x".repeat(200_000);
    let r = app
        .post_json("/load/a.bin", json!({"folder": FOLDER, "pad": huge}))
        .await;
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn a_token_about_to_expire_is_renewed_before_the_call() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "m.bin", &pattern(1000, 19));
    // The fake's tokens expire at 4_000_000_000; move to 30 s before that.
    let now = app.clock.unix_secs();
    app.clock
        .advance(Duration::from_secs(4_000_000_000 - 30 - now));
    assert_eq!(app.load("m.bin", FOLDER).await.status(), 200);
    assert_eq!(
        app.api.calls(FakeRoute::Login),
        2,
        "renewed ahead of expiry"
    );
    assert_eq!(
        app.api.calls(FakeRoute::GetResource),
        2,
        "no refused call was needed"
    );
}

#[tokio::test]
async fn the_fingerprint_is_probed_once_so_it_stays_the_same_for_the_process() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "m.bin", &pattern(1000, 20));
    let bound = app.api.bound_hardware(crate::support::EMAIL).unwrap();
    app.hardware.set_broken(true);
    assert_eq!(app.load("m.bin", FOLDER).await.status(), 200);
    assert_eq!(
        app.api.bound_hardware(crate::support::EMAIL).unwrap(),
        bound
    );
}

#[tokio::test]
async fn login_fails_clearly_when_the_hardware_cannot_be_read() {
    let app = TestApp::spawn().await;
    app.hardware.set_broken(true);
    let r = app.login().await;
    assert_eq!(r.status(), 500);
    assert!(
        TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("hardware")
    );
}

#[tokio::test]
async fn an_object_replaced_during_a_resumed_read_is_never_spliced_or_cached() {
    let app = TestApp::logged_in().await;
    let plain = pattern(400_000, 21);
    // A re-upload of the same content: same length, new IV. Spliced onto the old
    // part, CBC would garble one block only and the padding would still check out,
    // so only the object's version can catch the splice.
    let (_, newer_big) = app.seed(FOLDER, "m.bin", &plain);
    let (small, big) = app.seed(FOLDER, "m.bin", &plain);
    assert_eq!(newer_big.len(), big.len());
    app.api.put_file(Some(FOLDER), "m.bin.small", small);
    app.store.put_object(FOLDER, "m.bin.big", big);
    app.store.cut_next_read_and_replace(100_000, newer_big);
    let sent = app
        .client
        .post(app.url("/load/m.bin"))
        .json(&json!({"folder": FOLDER}))
        .send()
        .await;
    match sent {
        Ok(r) => assert!(
            r.bytes().await.is_err(),
            "a spliced body must not end cleanly"
        ),
        Err(e) => assert!(!e.is_status(), "{e}"),
    }
    assert!(!app.cache.contains(FOLDER, "m.bin"));
}

#[tokio::test]
async fn a_small_part_that_does_not_decrypt_answers_502_and_caches_nothing() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "m.bin", &pattern(20_000, 22));
    app.api.corrupt_next_resources(1);
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 502);
    assert!(!app.cache.contains(FOLDER, "m.bin"));
    assert!(
        app.store.gets().is_empty(),
        "the CDN is not read for an undecryptable small part"
    );
}

#[tokio::test]
async fn a_load_from_the_cache_announces_the_exact_length_and_one_from_the_cdn_streams_chunked() {
    let app = TestApp::logged_in().await;
    let block = BLOCK_LEN as usize;
    // Around the AES block, the small part's cap, a big part shorter than two
    // AES blocks, and cache blocks whose last one is shorter than 32 bytes.
    for (i, len) in [
        0,
        1,
        15,
        16,
        17,
        50,
        3000,
        3100,
        block - 1,
        block + 5,
        2 * block + 40,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("len{i}.bin");
        let plain = pattern(len, i as u8);
        app.seed(FOLDER, &name, &plain);
        let first = app.load(&name, FOLDER).await;
        assert_eq!(first.status(), 200);
        assert_eq!(first.content_length(), None, "len {len}: from the CDN");
        assert_eq!(first.bytes().await.unwrap().to_vec(), plain, "len {len}");

        let second = app.load(&name, FOLDER).await;
        assert_eq!(second.status(), 200);
        assert_eq!(
            second.content_length(),
            Some(len as u64),
            "len {len}: from the cache"
        );
        assert_eq!(second.bytes().await.unwrap().to_vec(), plain, "len {len}");
    }
}

/// A loader that reads big parts in segments of 64 KiB, four requests at a time.
async fn parallel_app() -> TestApp {
    let app = TestApp::spawn_with(|c| {
        c.cdn_reads = CdnReads {
            segment: SEGMENT,
            parallel: 4,
        }
    })
    .await;
    assert_eq!(app.login().await.status(), 200);
    app
}

const SEGMENT: u64 = 64 * 1024;

#[tokio::test]
async fn a_big_part_longer_than_a_segment_is_read_in_parallel_ranges_and_cached_whole() {
    let app = parallel_app().await;
    let plain = pattern(20 * SEGMENT as usize + 12_345, 7);
    let (_, big) = app.seed(FOLDER, "m.bin", &plain);
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), plain);

    // One GET of the whole object (its first segment used), then one per segment.
    let mut offsets: Vec<u64> = app.store.gets().into_iter().map(|(_, at)| at).collect();
    offsets.sort_unstable();
    let expected: Vec<u64> = (0..big.len() as u64).step_by(SEGMENT as usize).collect();
    assert_eq!(offsets, expected);
    assert_eq!(app.cache.data(FOLDER, "m.bin").unwrap(), big);
}

#[tokio::test]
async fn a_range_read_cut_midway_is_asked_again_from_where_it_stopped() {
    let app = parallel_app().await;
    let plain = pattern(6 * SEGMENT as usize, 8);
    let (_, big) = app.seed(FOLDER, "m.bin", &plain);
    // The first GET whole, the next one (a range) cut after 1000 bytes.
    app.store.cut_next_read(u64::MAX);
    app.store.cut_next_read(1000);
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), plain);
    let gets = app.store.gets();
    assert!(
        gets.iter().any(|(_, at)| at % SEGMENT == 1000),
        "the cut range is asked again from byte 1000 of it: {gets:?}"
    );
    assert_eq!(app.cache.data(FOLDER, "m.bin").unwrap(), big);
}

#[tokio::test]
async fn an_object_replaced_during_a_parallel_read_is_never_spliced_or_cached() {
    let app = parallel_app().await;
    let plain = pattern(6 * SEGMENT as usize, 9);
    // A re-upload of the same content (same length, new IV): only the
    // object's version can tell its ranges from the old one's.
    let (_, newer_big) = app.seed(FOLDER, "m.bin", &plain);
    let (small, big) = app.seed(FOLDER, "m.bin", &plain);
    app.api.put_file(Some(FOLDER), "m.bin.small", small);
    app.store.put_object(FOLDER, "m.bin.big", big);
    // Replaced right after the first GET started: every range is of the new version.
    app.store.cut_next_read_and_replace(u64::MAX, newer_big);
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "a spliced body must not end cleanly"
    );
    assert!(!app.cache.contains(FOLDER, "m.bin"));
}
