//! PROTOCOL §5.4 and the other integrity rules of issue 12 through the real
//! HTTP stack with fakes: a load never joins two uploads, the key fragment
//! renews its token once, and an empty name is a bad name.

use azaion_loader::adapters::fakes::FakeRoute;
use azaion_loader::domain::cache_record::{small_part_digest, small_sha256_hex};
use azaion_loader::domain::keys::{AesKey, resource_key};
use azaion_loader::domain::names::Folder;
use azaion_loader::domain::split::split;
use azaion_loader::ports::{ApiError, ObjectStore};
use serde_json::json;

use crate::support::{EMAIL, FOLDER, PASSWORD, TestApp, pattern};

const NAME: &str = "weights.bin";

/// Uploads v1, then v2 while the API refuses v2's small part.
async fn failed_re_upload(app: &TestApp) -> (Vec<u8>, Vec<u8>) {
    let (v1, v2) = (pattern(64 * 1024, 1), pattern(64 * 1024, 2));
    assert_eq!(app.upload(NAME, FOLDER, v1.clone()).await.status(), 200);
    app.api.fail_next(
        FakeRoute::PutResource,
        1,
        ApiError::Upstream { status: 500 },
    );
    let r = app.upload(NAME, FOLDER, v2.clone()).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    let detail = TestApp::json(r).await["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains("upload the resource again"), "{detail}");
    (v1, v2)
}

#[tokio::test]
async fn a_failed_re_upload_answers_409_and_never_a_spliced_200_with_a_warm_cache() {
    let app = TestApp::logged_in().await;
    failed_re_upload(&app).await;
    let small_reads = app.api.calls(FakeRoute::GetResource);
    let r = app.load(NAME, FOLDER).await;
    assert_eq!(r.status(), 409);
    let detail = TestApp::json(r).await["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains("being replaced"), "{detail}");
    // The small part was asked for once more before refusing.
    assert_eq!(app.api.calls(FakeRoute::GetResource), small_reads + 2);
}

#[tokio::test]
async fn a_failed_re_upload_answers_409_and_never_a_spliced_200_with_a_cold_cache() {
    let app = TestApp::logged_in().await;
    failed_re_upload(&app).await;
    app.cache.remove_all_for_test();
    let r = app.load(NAME, FOLDER).await;
    assert_eq!(r.status(), 409);
    assert!(
        !app.cache.contains(FOLDER, NAME),
        "a mismatched part was cached"
    );
}

#[tokio::test]
async fn an_upload_tags_its_big_part_with_the_sha256_of_its_small_part() {
    let app = TestApp::logged_in().await;
    assert_eq!(
        app.upload(NAME, FOLDER, pattern(100_000, 3)).await.status(),
        200
    );
    let small = app
        .api
        .file(Some(FOLDER), &format!("{NAME}.small"))
        .unwrap();
    assert_eq!(
        app.store.small_sha256(FOLDER, &format!("{NAME}.big")),
        Some(small_sha256_hex(&small_part_digest(&small)))
    );
}

#[tokio::test]
async fn a_big_part_without_metadata_still_loads() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, NAME, &pattern(70_000, 4));
    assert_eq!(app.store.small_sha256(FOLDER, &format!("{NAME}.big")), None);
    assert_eq!(app.load_bytes(NAME, FOLDER).await, pattern(70_000, 4));
}

#[tokio::test]
async fn a_load_racing_an_upload_gets_one_whole_version_or_409_over_50_rounds() {
    let app = TestApp::logged_in().await;
    let versions: Vec<Vec<u8>> = (0..2).map(|v| pattern(96 * 1024, 10 + v)).collect();
    assert_eq!(
        app.upload(NAME, FOLDER, versions[0].clone()).await.status(),
        200
    );
    let (mut whole, mut conflicts) = (0, 0);
    for round in 0..50 {
        let next = versions[(round + 1) % 2].clone();
        // The small part's PUT lags behind the big part's, as over a slow
        // link; the load starts at a different point of the upload each round.
        app.api.stall_next(
            FakeRoute::PutResource,
            1,
            std::time::Duration::from_millis(20),
        );
        let (uploaded, loaded) = tokio::join!(app.upload(NAME, FOLDER, next), async {
            tokio::time::sleep(std::time::Duration::from_millis(round as u64 % 25)).await;
            app.load(NAME, FOLDER).await
        });
        assert_eq!(uploaded.status(), 200);
        match loaded.status().as_u16() {
            200 => {
                let bytes = loaded.bytes().await.unwrap();
                assert!(
                    versions.iter().any(|v| v.as_slice() == bytes.as_ref()),
                    "round {round}: {} bytes that are neither version",
                    bytes.len()
                );
                whole += 1;
            }
            409 => conflicts += 1,
            other => panic!("round {round}: status {other}"),
        }
    }
    println!("50 racing loads: {whole} whole versions, {conflicts} conflicts");
}

#[tokio::test]
async fn a_damaged_cached_block_is_never_refetched_from_another_upload() {
    let app = TestApp::logged_in().await;
    let v1 = pattern(3 << 20, 7);
    assert_eq!(app.upload(NAME, FOLDER, v1.clone()).await.status(), 200);
    assert!(app.cache.contains(FOLDER, NAME));
    // Another upload of the same length replaces the CDN's big part (its
    // small part never made it): CBC would join the two with one garbled
    // block and valid padding.
    let other = azaion_loader::domain::cipher::encrypt(
        &AesKey::from_key_string(&resource_key()),
        [9; 16],
        &pattern(3 << 20, 8),
    );
    let (other_small, other_big) = split(&other);
    let folder = Folder::parse(FOLDER).unwrap();
    let body = futures::stream::iter(vec![Ok(bytes::Bytes::copy_from_slice(other_big))]);
    app.store
        .put_tagged(
            &folder,
            &format!("{NAME}.big"),
            Box::pin(body),
            Some(&small_sha256_hex(&small_part_digest(other_small))),
        )
        .await
        .unwrap();
    // A block in the middle of the cached entry is damaged: the refetch would
    // have to come from the CDN's (other) object.
    app.cache.damage_at(FOLDER, NAME, 2 << 20);
    let r = app.load(NAME, FOLDER).await;
    if r.status() == 200 {
        let body = r.bytes().await;
        assert!(
            body.is_err(),
            "a clean 200 joined the cache's blocks to another upload's"
        );
    }
}

#[tokio::test]
async fn a_key_fragment_refusing_the_token_once_logs_in_again_once_and_reaches_ready() {
    let app = TestApp::spawn_with(|c| c.expected_images = vec!["azaion/a:1".to_owned()]).await;
    let fragment = b"fragment-x";
    app.api.set_key_fragment(fragment);
    let plain = azaion_loader::adapters::fakes::fake_archive(&["azaion/a:1"], 10_000);
    let encrypted = azaion_loader::domain::cipher::encrypt(
        &azaion_loader::domain::keys::AesKey::from_archive_fragment(fragment),
        [1; 16],
        &plain,
    );
    std::fs::create_dir_all(app.config.images_path.parent().unwrap()).unwrap();
    std::fs::write(&app.config.images_path, encrypted).unwrap();
    app.api
        .fail_next(FakeRoute::KeyFragment, 1, ApiError::Unauthorized);
    let r = app
        .post_json("/unlock", json!({"email": EMAIL, "password": PASSWORD}))
        .await;
    assert_eq!(r.status(), 200);
    let v = app.wait_unlock(&["ready", "error"]).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(app.api.calls(FakeRoute::Login), 2, "one re-login");
    assert_eq!(app.api.calls(FakeRoute::KeyFragment), 2, "one retry");
}

#[tokio::test]
async fn a_key_fragment_refusing_the_renewed_token_too_ends_in_error_without_a_third_try() {
    let app = TestApp::spawn_with(|c| c.expected_images = vec!["azaion/a:1".to_owned()]).await;
    app.api.set_key_fragment(b"fragment-y");
    std::fs::create_dir_all(app.config.images_path.parent().unwrap()).unwrap();
    std::fs::write(&app.config.images_path, vec![0u8; 64]).unwrap();
    app.api
        .fail_next(FakeRoute::KeyFragment, 2, ApiError::Unauthorized);
    app.post_json("/unlock", json!({"email": EMAIL, "password": PASSWORD}))
        .await;
    let v = app.wait_unlock(&["ready", "error"]).await;
    assert_eq!(v["state"], "error", "{v}");
    assert_eq!(app.api.calls(FakeRoute::KeyFragment), 2);
}

#[tokio::test]
async fn an_empty_name_is_a_bad_name_on_load_and_upload() {
    let app = TestApp::logged_in().await;
    let r = app
        .post_json("/load/", json!({"filename": "", "folder": FOLDER}))
        .await;
    assert_eq!(r.status(), 400);
    assert!(
        TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("empty")
    );
    let form = reqwest::multipart::Form::new()
        .text("folder", FOLDER)
        .part("data", reqwest::multipart::Part::bytes(vec![1, 2, 3]));
    let r = app
        .client
        .post(app.url("/upload/"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("empty")
    );
    assert_eq!(app.store.puts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_cold_loads_of_one_resource_share_one_cdn_read_and_one_cache_write() {
    let app = TestApp::spawn_with_fs_cache().await;
    assert_eq!(app.login().await.status(), 200);
    let plain = pattern(16 << 20, 9);
    app.seed(FOLDER, NAME, &plain);
    // Watch the cache folder for temporary files while the loads run.
    let cache_dir = app.config.model_cache_dir.clone();
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let most_temps = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let (watching, most_temps, cache_dir) =
            (watching.clone(), most_temps.clone(), cache_dir.clone());
        std::thread::spawn(move || {
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let temps = crate::support::files_under(&cache_dir)
                    .iter()
                    .filter(|p| p.to_string_lossy().contains(".big.tmp-"))
                    .count();
                most_temps.fetch_max(temps, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let loads = (0..16).map(|_| app.load_bytes(NAME, FOLDER));
    let bodies = futures::future::join_all(loads).await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    for body in &bodies {
        assert!(body == &plain, "a load was not byte-exact");
    }
    // One read of the object's bytes: every offset asked for once, 0 once.
    let gets: Vec<u64> = app
        .store
        .gets()
        .into_iter()
        .filter(|(key, _)| key == &format!("{NAME}.big"))
        .map(|(_, from)| from)
        .collect();
    let mut distinct = gets.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        gets.len(),
        "a byte range was read twice: {gets:?}"
    );
    assert_eq!(
        gets.iter().filter(|&&from| from == 0).count(),
        1,
        "{gets:?}"
    );
    let most = most_temps.load(std::sync::atomic::Ordering::Relaxed);
    assert!(most <= 1, "{most} temporary cache files at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_client_that_hangs_up_does_not_stop_the_read_it_waits_for() {
    let app = TestApp::spawn_with_fs_cache().await;
    assert_eq!(app.login().await.status(), 200);
    let plain = pattern(32 << 20, 11);
    app.seed(FOLDER, NAME, &plain);
    let leader = app.load(NAME, FOLDER).await;
    assert_eq!(leader.status(), 200);
    // A second client misses too, waits for the leader's read, and gives up.
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(app.url(&format!("/load/{NAME}")))
        .json(&json!({"filename": NAME, "folder": FOLDER}))
        .send()
        .await;
    assert!(
        gave_up.is_err(),
        "the follower was served before the leader's read ended"
    );
    assert_eq!(leader.bytes().await.unwrap().as_ref(), plain.as_slice());
    // The leader's read filled the cache: the next load reads nothing from the CDN.
    let reads = app.store.gets().len();
    assert_eq!(app.load_bytes(NAME, FOLDER).await, plain);
    assert_eq!(app.store.gets().len(), reads);
}
