//! F3: upload through the loader, and round trips with download.

use crate::support::{FOLDER, TestApp, pattern};
use azaion_loader::adapters::fakes::FakeRoute;
use azaion_loader::domain::cipher::decrypt;
use azaion_loader::domain::keys::{AesKey, resource_key};
use azaion_loader::domain::split::small_part_len;
use azaion_loader::ports::{ApiError, StoreError};

#[tokio::test]
async fn upload_splits_into_api_small_part_and_cdn_big_part_and_round_trips() {
    let app = TestApp::logged_in().await;
    let plain = pattern(123_457, 20);
    let r = app.upload("new.onnx", FOLDER, plain.clone()).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let small = app
        .api
        .file(Some(FOLDER), "new.onnx.small")
        .expect("small part at the API");
    let big = app
        .store
        .object(FOLDER, "new.onnx.big")
        .expect("big part in the CDN");
    let joined: Vec<u8> = small.iter().chain(big.iter()).copied().collect();
    assert_eq!(small.len() as u64, small_part_len(joined.len() as u64));
    assert_eq!(
        decrypt(&AesKey::from_key_string(&resource_key()), &joined).unwrap(),
        plain
    );
    assert_eq!(
        app.cache.data(FOLDER, "new.onnx").unwrap(),
        big,
        "the big part is cached"
    );
    let r = app.load("new.onnx", FOLDER).await;
    assert_eq!(r.bytes().await.unwrap().to_vec(), plain);
    assert!(
        app.store.gets().is_empty(),
        "served from the cache filled by the upload"
    );
}

#[tokio::test]
async fn uploads_of_every_small_size_round_trip() {
    let app = TestApp::logged_in().await;
    for (i, len) in [0usize, 1, 16, 7_000, 7_152, 7_153, 10_240, 20_000]
        .into_iter()
        .enumerate()
    {
        let name = format!("u{i}.bin");
        let plain = pattern(len, i as u8);
        assert_eq!(
            app.upload(&name, FOLDER, plain.clone()).await.status(),
            200,
            "len {len}"
        );
        app.cache.remove_all_for_test();
        assert_eq!(
            app.load(&name, FOLDER)
                .await
                .bytes()
                .await
                .unwrap()
                .to_vec(),
            plain,
            "len {len}"
        );
    }
}

#[tokio::test]
async fn upload_with_data_before_folder_is_held_then_stored() {
    let app = TestApp::logged_in().await;
    let plain = pattern(2_000_000, 21);
    let form = reqwest::multipart::Form::new()
        .part(
            "data",
            reqwest::multipart::Part::bytes(plain.clone()).file_name("late.bin"),
        )
        .text("folder", FOLDER);
    let r = app
        .client
        .post(app.url("/upload/late.bin"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        app.load("late.bin", FOLDER)
            .await
            .bytes()
            .await
            .unwrap()
            .to_vec(),
        plain
    );
    assert!(app.files_outside_cache().is_empty());
}

#[tokio::test]
async fn upload_returns_404_when_the_cdn_has_no_such_bucket() {
    let app = TestApp::logged_in().await;
    let r = app.upload("x.bin", "nobucket", pattern(50_000, 22)).await;
    assert_eq!(r.status(), 404);
    assert!(app.api.file(Some("nobucket"), "x.bin.small").is_none());
    assert!(!app.cache.contains("nobucket", "x.bin"));
}

#[tokio::test]
async fn upload_returns_401_before_login_and_stores_nothing() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.upload("x.bin", FOLDER, pattern(100, 23)).await.status(),
        401
    );
    assert_eq!(app.store.puts(), 0);
}

#[tokio::test]
async fn upload_with_bad_names_answers_400_and_stores_nothing() {
    let app = TestApp::logged_in().await;
    assert_eq!(
        app.upload("bad%20name", FOLDER, pattern(10, 24))
            .await
            .status(),
        400
    );
    assert_eq!(
        app.upload("ok.bin", "Bad_Folder", pattern(10, 24))
            .await
            .status(),
        400
    );
    assert_eq!(app.store.puts(), 0);
    assert_eq!(app.api.calls(FakeRoute::PutResource), 0);
}

#[tokio::test]
async fn malformed_forms_answer_400_and_store_nothing() {
    let app = TestApp::logged_in().await;
    let no_data = reqwest::multipart::Form::new().text("folder", FOLDER);
    let no_folder = reqwest::multipart::Form::new()
        .part("data", reqwest::multipart::Part::bytes(vec![1, 2, 3]));
    let two_files = reqwest::multipart::Form::new()
        .text("folder", FOLDER)
        .part("data", reqwest::multipart::Part::bytes(vec![1; 20_000]))
        .part("data", reqwest::multipart::Part::bytes(vec![2; 10]));
    for form in [no_data, no_folder, two_files] {
        let r = app
            .client
            .post(app.url("/upload/f.bin"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(TestApp::json(r).await["detail"].is_string());
    }
    let not_multipart = app
        .client
        .post(app.url("/upload/f.bin"))
        .body("raw")
        .send()
        .await
        .unwrap();
    assert_eq!(not_multipart.status(), 400);
    assert!(app.store.object(FOLDER, "f.bin.big").is_none());
    assert_eq!(app.api.calls(FakeRoute::PutResource), 0);
}

#[tokio::test]
async fn upload_returns_5xx_when_the_cdn_or_api_fails() {
    let app = TestApp::logged_in().await;
    app.store
        .fail_next_puts(1, StoreError::Unavailable("down".into()));
    assert_eq!(
        app.upload("x.bin", FOLDER, pattern(50_000, 25))
            .await
            .status(),
        503
    );
    assert!(app.api.file(Some(FOLDER), "x.bin.small").is_none());
    app.api.fail_next(
        FakeRoute::PutResource,
        1,
        ApiError::Upstream { status: 500 },
    );
    assert_eq!(
        app.upload("y.bin", FOLDER, pattern(50_000, 26))
            .await
            .status(),
        502
    );
}

#[tokio::test]
async fn upload_renews_an_expired_token() {
    let app = TestApp::logged_in().await;
    app.api.expire_tokens();
    assert_eq!(
        app.upload("x.bin", FOLDER, pattern(5_000, 27))
            .await
            .status(),
        200
    );
    assert_eq!(app.api.calls(FakeRoute::Login), 2);
}

#[tokio::test]
async fn an_upload_arriving_in_small_chunks_splits_where_its_whole_length_says() {
    // The split point is known only after SPLIT_KNOWN_AT bytes (or the end):
    // a body that trickles in must not be cut at the first chunk boundary.
    use azaion_loader::domain::names::{Folder, ResourceName};
    use futures::StreamExt;
    let app = TestApp::logged_in().await;
    for len in [2_000usize, 5_000, 20_000] {
        let plain = pattern(len, 21);
        let chunks: Vec<std::io::Result<bytes::Bytes>> = plain
            .chunks(100)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let name = format!("trickle-{len}.bin");
        app.state
            .resources
            .upload(
                &Folder::parse(FOLDER).unwrap(),
                &ResourceName::parse(&name).unwrap(),
                futures::stream::iter(chunks).boxed(),
            )
            .await
            .unwrap_or_else(|e| panic!("{len}: {e}"));
        let small = app
            .api
            .file(Some(FOLDER), &format!("{name}.small"))
            .unwrap();
        let big = app.store.object(FOLDER, &format!("{name}.big")).unwrap();
        let joined: Vec<u8> = small.iter().chain(big.iter()).copied().collect();
        assert_eq!(
            small.len() as u64,
            small_part_len(joined.len() as u64),
            "{len}"
        );
        assert_eq!(
            decrypt(&AesKey::from_key_string(&resource_key()), &joined).unwrap(),
            plain,
            "{len}"
        );
    }
}
