//! Unit tests of `store`.

use super::*;

async fn accept(_: AdapterRecord) -> Result<(), AdapterError> {
    Ok(())
}

/// An upload staged the way the admin API streams one.
async fn staged(store: &AdapterStore, weights: &[u8]) -> Staging {
    let staging = store.stage().await.unwrap();
    let mut writer = staging.weights_writer(1024).await.unwrap();
    writer.write(weights).await.unwrap();
    writer.finish().await.unwrap();
    staging
}

/// Stores `weights` as adapter `name` of tenant `acme`, the load accepted.
async fn put(
    store: &AdapterStore,
    name: &str,
    weights: &[u8],
    expected: Option<u64>,
) -> Result<(AdapterRecord, Option<AdapterRecord>), AdapterError> {
    let staging = staged(store, weights).await;
    store
        .put(record(name), staging, b"{}".to_vec(), expected, accept)
        .await
}

fn record(name: &str) -> AdapterRecord {
    AdapterRecord {
        tenant: "acme".into(),
        name: name.into(),
        generation: 0,
        rank: 8,
        alpha: 16.0,
        target_modules: vec!["q_proj".into()],
        size_bytes: 3,
        sha256: "00".into(),
        created_at: 1,
        shared: false,
    }
}

#[tokio::test]
async fn generations_replace_by_compare_and_swap() {
    let root = tempfile::tempdir().unwrap();
    let store = AdapterStore::open(root.path()).unwrap();
    let first = put(&store, "bot", b"one", None).await.unwrap().0;
    assert_eq!(first.generation, 1);
    // Replacing without naming the current generation is refused.
    assert!(matches!(
        put(&store, "bot", b"two", None).await,
        Err(AdapterError::Conflict { current: 1, .. })
    ));
    assert!(matches!(
        put(&store, "bot", b"two", Some(7)).await,
        Err(AdapterError::Conflict { .. })
    ));
    let (second, replaced) = put(&store, "bot", b"two", Some(1)).await.unwrap();
    assert_eq!(replaced.map(|r| r.generation), Some(1));
    assert_eq!(second.generation, 2);
    assert_eq!(store.current("acme", "bot").unwrap().generation, 2);
    assert_eq!(
        std::fs::read(
            store
                .generation_dir(&second)
                .join("adapter_model.safetensors")
        )
        .unwrap(),
        b"two"
    );
    assert_eq!(store.generations("acme", "bot"), vec![1, 2]);
    // A new name may say generation 0 explicitly.
    assert_eq!(
        put(&store, "other", b"x", Some(0))
            .await
            .unwrap()
            .0
            .generation,
        1
    );
    assert_eq!(store.list("acme").len(), 2);
    assert!(store.list("globex").is_empty());
}

#[tokio::test]
async fn rollback_and_delete() {
    let root = tempfile::tempdir().unwrap();
    let store = AdapterStore::open(root.path()).unwrap();
    put(&store, "bot", b"one", None).await.unwrap();
    assert!(matches!(
        store.rollback("acme", "bot", None).await,
        Err(AdapterError::NoPreviousGeneration(_))
    ));
    put(&store, "bot", b"two", Some(1)).await.unwrap();
    let (now, undone) = store.rollback("acme", "bot", Some(2)).await.unwrap();
    assert_eq!((now.generation, undone.generation), (1, 2));
    assert!(!store.generation_dir(&undone).exists());
    // The next upload does not reuse a number the store handed out before.
    assert_eq!(
        put(&store, "bot", b"three", Some(1))
            .await
            .unwrap()
            .0
            .generation,
        3
    );
    let removed = store.delete("acme", "bot", None).await.unwrap();
    assert_eq!(removed.len(), 2);
    assert!(store.current("acme", "bot").is_none());
    assert!(!root.path().join("acme/bot").exists());
    assert!(matches!(
        store.delete("acme", "bot", None).await,
        Err(AdapterError::NotFound(_))
    ));
}

#[tokio::test]
async fn reopening_finds_everything_and_sweeps_half_writes() {
    let root = tempfile::tempdir().unwrap();
    {
        let store = AdapterStore::open(root.path()).unwrap();
        put(&store, "bot", b"one", None).await.unwrap();
        put(&store, "bot", b"two", Some(1)).await.unwrap();
    }
    // A crash mid-upload leaves a staging folder; a broken adapter has no CURRENT.
    std::fs::create_dir_all(root.path().join(".staging/abc")).unwrap();
    std::fs::write(
        root.path().join(".staging/abc/adapter_model.safetensors"),
        b"partial",
    )
    .unwrap();
    std::fs::create_dir_all(root.path().join("acme/broken/1")).unwrap();
    let store = AdapterStore::open(root.path()).unwrap();
    assert_eq!(store.current("acme", "bot").unwrap().generation, 2);
    assert_eq!(store.generations("acme", "bot"), vec![1, 2]);
    assert!(store.current("acme", "broken").is_none());
    assert!(!root.path().join(".staging/abc").exists());
}

#[tokio::test]
async fn a_failed_load_before_the_switch_leaves_nothing_behind() {
    let root = tempfile::tempdir().unwrap();
    let store = AdapterStore::open(root.path()).unwrap();
    put(&store, "bot", b"one", None).await.unwrap();
    let refuse = |_| async { Err(AdapterError::LoadTimeout) };
    assert!(
        store
            .put(
                record("bot"),
                staged(&store, b"two").await,
                b"{}".to_vec(),
                Some(1),
                refuse
            )
            .await
            .is_err()
    );
    assert_eq!(store.current("acme", "bot").unwrap().generation, 1);
    assert_eq!(store.generations("acme", "bot"), vec![1]);
    assert!(!root.path().join("acme/bot/2").exists());
    assert!(
        store
            .put(
                record("new"),
                staged(&store, b"x").await,
                b"{}".to_vec(),
                None,
                refuse
            )
            .await
            .is_err()
    );
    assert!(!root.path().join("acme/new").exists());
}

#[tokio::test]
async fn generations_are_never_reused_for_a_name_even_across_delete_and_restart() {
    let root = tempfile::tempdir().unwrap();
    let generation = |result: Result<(AdapterRecord, Option<AdapterRecord>), AdapterError>| {
        result.map(|(record, _)| record.generation)
    };
    {
        let store = AdapterStore::open(root.path()).unwrap();
        let bot = |expected| {
            let store = &store;
            async move {
                generation(
                    store
                        .put(
                            record("bot"),
                            staged(store, b"w").await,
                            b"{}".to_vec(),
                            expected,
                            accept,
                        )
                        .await,
                )
            }
        };
        assert_eq!(bot(None).await.unwrap(), 1);
        assert_eq!(bot(Some(1)).await.unwrap(), 2);
        store.rollback("acme", "bot", Some(2)).await.unwrap();
        assert_eq!(bot(Some(1)).await.unwrap(), 3, "2 was handed out before");
        assert!(matches!(
            bot(Some(2)).await,
            Err(AdapterError::Conflict {
                expected: 2,
                current: 3
            })
        ));
        // A load that fails still used its number.
        let refused = store
            .put(
                record("bot"),
                staged(&store, b"w").await,
                b"{}".to_vec(),
                Some(3),
                |_| async { Err(AdapterError::LoadTimeout) },
            )
            .await;
        assert!(refused.is_err());
        assert_eq!(bot(Some(3)).await.unwrap(), 5);
        store.delete("acme", "bot", None).await.unwrap();
    }
    let store = AdapterStore::open(root.path()).unwrap();
    assert!(store.current("acme", "bot").is_none());
    let again = put(&store, "bot", b"w", None).await.unwrap().0;
    assert_eq!(
        again.generation, 6,
        "the mark outlives the delete and the restart"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("acme/.generations/bot")).unwrap(),
        "6"
    );
    // Another name has its own numbering.
    let other = put(&store, "other", b"w", None).await.unwrap().0;
    assert_eq!(other.generation, 1);
}

#[tokio::test]
async fn an_unreadable_mark_refuses_rather_than_guessing() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("acme/.generations")).unwrap();
    std::fs::write(root.path().join("acme/.generations/bot"), b"garbage").unwrap();
    let store = AdapterStore::open(root.path()).unwrap();
    assert!(matches!(
        put(&store, "bot", b"w", None).await,
        Err(AdapterError::Io(_))
    ));
    assert!(store.current("acme", "bot").is_none());
    assert_eq!(
        std::fs::read_dir(root.path().join(".staging"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn a_generation_that_never_became_current_is_swept_at_open() {
    let root = tempfile::tempdir().unwrap();
    {
        let store = AdapterStore::open(root.path()).unwrap();
        put(&store, "bot", b"one", None).await.unwrap();
    }
    // As a crash between an upload's rename and its switch leaves it: the
    // number was recorded before the folder was made.
    std::fs::write(root.path().join("acme/.generations/bot"), "2").unwrap();
    let stray = root.path().join("acme/bot/2");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(
        stray.join("record.json"),
        serde_json::to_vec(&AdapterRecord {
            generation: 2,
            ..record("bot")
        })
        .unwrap(),
    )
    .unwrap();
    let store = AdapterStore::open(root.path()).unwrap();
    assert_eq!(store.generations("acme", "bot"), vec![1]);
    assert!(!stray.exists());
    let next = put(&store, "bot", b"two", Some(1)).await.unwrap().0;
    assert_eq!(next.generation, 3, "its number is not handed out again");
}

#[tokio::test]
async fn a_store_from_before_marks_continues_from_its_folders() {
    let root = tempfile::tempdir().unwrap();
    {
        let store = AdapterStore::open(root.path()).unwrap();
        for (weights, expected) in [(&b"one"[..], None), (&b"two"[..], Some(1))] {
            store
                .put(
                    record("bot"),
                    staged(&store, weights).await,
                    b"{}".to_vec(),
                    expected,
                    accept,
                )
                .await
                .unwrap();
        }
    }
    std::fs::remove_dir_all(root.path().join("acme/.generations")).unwrap();
    let store = AdapterStore::open(root.path()).unwrap();
    let next = put(&store, "bot", b"three", Some(2)).await.unwrap().0;
    assert_eq!(next.generation, 3);
}

#[tokio::test]
async fn a_refused_put_removes_its_staged_upload() {
    let root = tempfile::tempdir().unwrap();
    let store = AdapterStore::open(root.path()).unwrap();
    put(&store, "bot", b"one", None).await.unwrap();
    assert!(put(&store, "bot", b"two", Some(9)).await.is_err());
    let staging = store.stage().await.unwrap();
    let mut writer = staging.weights_writer(4).await.unwrap();
    assert!(matches!(
        writer.write(b"12345").await,
        Err(AdapterError::TooLarge { limit: 4 })
    ));
    drop(writer);
    staging.discard().await;
    assert_eq!(
        std::fs::read_dir(root.path().join(".staging"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn a_slow_load_of_one_name_does_not_hold_up_other_names() {
    let root = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(AdapterStore::open(root.path()).unwrap());
    let (loading, loading_seen) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let slow = {
        let store = store.clone();
        let staging = staged(&store, b"slow").await;
        tokio::spawn(async move {
            store
                .put(
                    record("slow"),
                    staging,
                    b"{}".to_vec(),
                    None,
                    |_| async move {
                        let _ = loading.send(());
                        let _ = released.await;
                        Ok(())
                    },
                )
                .await
        })
    };
    loading_seen.await.unwrap();
    let other = put(&store, "other", b"x", None).await.unwrap().0;
    assert_eq!(other.generation, 1);
    store.delete("acme", "other", Some(1)).await.unwrap();
    assert!(!slow.is_finished(), "the slow load is still running");
    // The same name waits for it.
    let same = {
        let store = store.clone();
        let staging = staged(&store, b"again").await;
        tokio::spawn(async move {
            store
                .put(record("slow"), staging, b"{}".to_vec(), Some(1), accept)
                .await
        })
    };
    release.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap().0.generation, 1);
    assert_eq!(same.await.unwrap().unwrap().0.generation, 2);
    assert!(store.locks.lock().is_empty(), "idle names hold no lock");
}
