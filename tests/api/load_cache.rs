//! F2 with the cache: a hit skips the CDN; a stale, damaged or foreign entry
//! is never served and is replaced from the CDN.

use crate::support::{FOLDER, TestApp, pattern};
use azaion_loader::domain::cache_record::{BLOCK_LEN, small_part_digest};

#[tokio::test]
async fn a_second_load_is_served_from_the_cache_without_the_cdn() {
    let app = TestApp::logged_in().await;
    let plain = pattern(50_000, 2);
    app.seed(FOLDER, "m.bin", &plain);
    assert_eq!(
        app.load("m.bin", FOLDER)
            .await
            .bytes()
            .await
            .unwrap()
            .to_vec(),
        plain
    );
    app.store.remove_object(FOLDER, "m.bin.big");
    assert_eq!(
        app.load("m.bin", FOLDER)
            .await
            .bytes()
            .await
            .unwrap()
            .to_vec(),
        plain
    );
    assert_eq!(app.store.gets().len(), 1);
}

#[tokio::test]
async fn load_works_for_empty_and_tiny_resources() {
    let app = TestApp::logged_in().await;
    for (i, len) in [0usize, 1, 15, 16, 17, 3072, 10_240]
        .into_iter()
        .enumerate()
    {
        let name = format!("r{i}.bin");
        let plain = pattern(len, i as u8);
        app.seed(FOLDER, &name, &plain);
        let r = app.load(&name, FOLDER).await;
        assert_eq!(r.status(), 200, "len {len}");
        assert_eq!(r.bytes().await.unwrap().to_vec(), plain, "len {len}");
    }
}

#[tokio::test]
async fn a_stale_cached_big_part_is_never_served_and_is_replaced_from_the_cdn() {
    let app = TestApp::logged_in().await;
    let old = pattern(40_000, 3);
    app.seed(FOLDER, "m.bin", &old);
    assert_eq!(
        app.load("m.bin", FOLDER)
            .await
            .bytes()
            .await
            .unwrap()
            .to_vec(),
        old
    );
    // Re-uploaded elsewhere: new small part at the API, new big part in the CDN.
    let new = pattern(40_000, 4);
    let (_, new_big) = app.seed(FOLDER, "m.bin", &new);
    assert_eq!(
        app.load("m.bin", FOLDER)
            .await
            .bytes()
            .await
            .unwrap()
            .to_vec(),
        new
    );
    assert_eq!(app.cache.data(FOLDER, "m.bin").unwrap(), new_big);
}

#[tokio::test]
async fn a_damaged_cached_big_part_is_never_served_and_is_replaced_from_the_cdn() {
    let app = TestApp::logged_in().await;
    let plain = pattern(40_000, 5);
    let (_, big) = app.seed(FOLDER, "m.bin", &plain);
    app.load("m.bin", FOLDER).await.bytes().await.unwrap();
    app.cache.damage_record(FOLDER, "m.bin");
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), plain);
    assert_eq!(app.cache.data(FOLDER, "m.bin").unwrap(), big);
    assert_eq!(app.store.gets().len(), 2);
}

#[tokio::test]
async fn a_damaged_cached_block_is_never_served_and_the_rest_comes_from_the_cdn() {
    let app = TestApp::logged_in().await;
    let block = BLOCK_LEN as usize;
    let plain = pattern(2 * block + block / 2, 6);
    let (_, big) = app.seed(FOLDER, "m.bin", &plain);
    app.load("m.bin", FOLDER).await.bytes().await.unwrap();
    // A byte of the second block: the first is served from the cache.
    app.cache.damage_at(FOLDER, "m.bin", block + 5);
    assert_ne!(app.cache.data(FOLDER, "m.bin").unwrap(), big);

    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), plain);
    let gets = app.store.gets();
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[1], ("m.bin.big".to_owned(), BLOCK_LEN as u64));
    // The damaged entry is gone; the next load fetches and caches it whole.
    assert!(!app.cache.contains(FOLDER, "m.bin"));
    assert_eq!(
        app.load("m.bin", FOLDER)
            .await
            .bytes()
            .await
            .unwrap()
            .to_vec(),
        plain
    );
    assert_eq!(app.cache.data(FOLDER, "m.bin").unwrap(), big);
    assert_eq!(app.store.gets().len(), 3);
}

#[tokio::test]
async fn a_big_part_left_by_an_older_small_part_is_treated_as_stale() {
    let app = TestApp::logged_in().await;
    let plain = pattern(20_000, 6);
    let (_, big) = app.seed(FOLDER, "m.bin", &plain);
    app.cache.insert_raw(
        FOLDER,
        "m.bin",
        small_part_digest(b"some older small part"),
        big.clone(),
    );
    assert_eq!(
        app.load("m.bin", FOLDER)
            .await
            .bytes()
            .await
            .unwrap()
            .to_vec(),
        plain
    );
    assert_eq!(
        app.store.gets().len(),
        1,
        "the CDN was read instead of the stale entry"
    );
}
