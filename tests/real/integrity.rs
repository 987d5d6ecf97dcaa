//! PROTOCOL §5.4 through the real stack (the `serve` binary, the Resource API
//! emulator, s3s-fs, the filesystem cache): a failed re-upload answers 409,
//! never a 200 with one upload's small part joined to another's big part.

use azaion_loader::adapters::devstack::emulator::Route;
use azaion_loader::startup::dev::{self, DEMO_FOLDER};

use crate::e2e::{Loader, files_under, pattern, spawn_loader};

async fn upload(loader: &Loader, name: &str, data: Vec<u8>) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .text("folder", DEMO_FOLDER)
        .part(
            "data",
            reqwest::multipart::Part::bytes(data).file_name(name.to_owned()),
        );
    loader
        .client
        .post(loader.url(&format!("/upload/{name}")))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_re_upload_answers_409_with_a_warm_and_a_cold_cache() {
    let dir = tempfile::tempdir().unwrap();
    let peers = dev::peers_in(dir.path()).await.unwrap();
    let loader = spawn_loader(&peers.emulator.base_url(), dir.path(), &[]);
    loader.login().await;
    let (v1, v2) = (pattern(64 * 1024, 1), pattern(64 * 1024, 2));
    assert_eq!(upload(&loader, "w.bin", v1.clone()).await.status(), 200);
    let r = loader.load(DEMO_FOLDER, "w.bin").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), v1.as_slice());

    // The API refuses v2's small part (more often than the loader retries).
    peers.emulator.fail_next(Route::PutResource, 10, 500);
    let r = upload(&loader, "w.bin", v2).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("upload the resource again")
    );
    peers.emulator.clear_faults();

    // Warm: the cache holds v2's big part (bound to v2's small part).
    let r = loader.load(DEMO_FOLDER, "w.bin").await;
    assert_eq!(r.status(), 409, "{}", r.text().await.unwrap());
    // Cold: nothing cached, the CDN's big part is v2's.
    for file in files_under(&dir.path().join("cache")) {
        std::fs::remove_file(file).unwrap();
    }
    let r = loader.load(DEMO_FOLDER, "w.bin").await;
    assert_eq!(r.status(), 409, "{}", r.text().await.unwrap());

    // Uploading again mends it.
    let v3 = pattern(64 * 1024, 3);
    assert_eq!(upload(&loader, "w.bin", v3.clone()).await.status(), 200);
    let r = loader.load(DEMO_FOLDER, "w.bin").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), v3.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_uploads_gets_one_whole_version_or_409_over_50_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let peers = dev::peers_in(dir.path()).await.unwrap();
    let loader = spawn_loader(&peers.emulator.base_url(), dir.path(), &[]);
    loader.login().await;
    let versions: Vec<Vec<u8>> = (0..2).map(|v| pattern(96 * 1024, 20 + v)).collect();
    assert_eq!(
        upload(&loader, "r.bin", versions[0].clone()).await.status(),
        200
    );
    let (mut whole, mut conflicts) = (0, 0);
    for round in 0..50u64 {
        // The small part's PUT lags, as over a slow link.
        peers
            .emulator
            .stall_next(Route::PutResource, 1, std::time::Duration::from_millis(30));
        let next = versions[(round as usize + 1) % 2].clone();
        let (uploaded, loaded) = tokio::join!(upload(&loader, "r.bin", next), async {
            tokio::time::sleep(std::time::Duration::from_millis(round % 40)).await;
            loader.load(DEMO_FOLDER, "r.bin").await
        });
        assert_eq!(uploaded.status(), 200);
        match loaded.status().as_u16() {
            200 => {
                let bytes = loaded.bytes().await.unwrap();
                assert!(
                    versions.iter().any(|v| v.as_slice() == bytes.as_ref()),
                    "round {round}: a 200 with bytes of neither version"
                );
                whole += 1;
            }
            409 => conflicts += 1,
            other => panic!("round {round}: status {other}"),
        }
    }
    println!("50 racing loads through the real stack: {whole} whole, {conflicts} conflicts");
}
