use std::time::Duration;

use anyhow::Result;

use crate::harness::{
    Answer, ConfigDir, Instance, RunningNode, answer, eventually, one_node_config, start_node,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_moves_the_answer_and_survives_a_restart() -> Result<()> {
    let primary = Instance::start("primary").await?;
    let backup = Instance::start("backup").await?;
    let dir = ConfigDir::new()?;
    let file = dir.write(&one_node_config(
        &[&primary, &backup],
        "auto",
        "127.0.0.1:0",
    ))?;

    let RunningNode {
        dns, cancel, task, ..
    } = start_node(&file).await?;
    let first = eventually(Duration::from_secs(10), "the first decision", || {
        answer(dns)
    })
    .await?;
    assert_eq!(
        first,
        Answer {
            instance: "primary".into(),
            epoch: 1,
            cname: "primary.internal.".into()
        }
    );

    primary.kill().await;
    let moved = eventually(Duration::from_secs(10), "failover to backup", || async {
        Ok(answer(dns).await?.filter(|a| a.instance == "backup"))
    })
    .await?;
    assert_eq!(
        moved,
        Answer {
            instance: "backup".into(),
            epoch: 2,
            cname: "backup.internal.".into()
        }
    );

    // A clean stop within 2 seconds.
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task).await???;

    // The same data dir: the first answer after the restart (once the node
    // has confirmed it holds the quorum, SERVFAIL until then) is the kept
    // choice and epoch (S5).
    let RunningNode {
        dns, cancel, task, ..
    } = start_node(&file).await?;
    let restarted = eventually(
        Duration::from_secs(5),
        "an answer after the restart",
        || answer(dns),
    )
    .await?;
    assert_eq!(
        restarted, moved,
        "restart must keep the active instance and epoch"
    );
    // And the node does not flip it afterwards: primary is still down, backup up.
    tokio::time::sleep(Duration::from_millis(600)).await; // several probe intervals; we assert nothing changed
    assert_eq!(answer(dns).await?, Some(moved));

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task).await???;
    drop(backup);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_decision_answers_servfail_until_an_instance_is_up() -> Result<()> {
    // Both instances are down from the start: nothing can be chosen.
    let primary = Instance::start("primary").await?;
    let backup = Instance::start("backup").await?;
    let dir = ConfigDir::new()?;
    let file = dir.write(&one_node_config(
        &[&primary, &backup],
        "auto",
        "127.0.0.1:0",
    ))?;
    primary.kill().await;
    backup.kill().await;

    let RunningNode {
        dns, cancel, task, ..
    } = start_node(&file).await?;
    // Give the probes time to mark both down (fall = 2 at 100 ms), then check.
    tokio::time::sleep(Duration::from_millis(500)).await; // a window in which a wrong answer would show
    assert_eq!(answer(dns).await?, None, "no decision yet must be SERVFAIL");

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task).await???;
    Ok(())
}
