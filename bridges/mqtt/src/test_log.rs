//! An embedded log in a temporary directory, for the crate's unit tests.

use std::{path::Path, sync::Arc};

use courier_gateway::{
    config::{EmbeddedConfig, GroupsConfig, TopicsConfig},
    log::{Embedded, Log, layers},
};

/// A fresh embedded log in `dir`.
pub(crate) async fn embedded(dir: &Path) -> courier_gateway::Result<Arc<dyn Log>> {
    let topics = TopicsConfig::default();
    let log = Embedded::open(
        &EmbeddedConfig::in_dir(dir),
        topics.clone(),
        GroupsConfig::default(),
        "test",
    )
    .await?;
    Ok(Arc::new(layers::stack(log, &topics)))
}
