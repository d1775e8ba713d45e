//! For the test suites of this crate and the front ends (feature `test-util`): a fresh embedded log
//! behind the layers the binary composes, so every suite tests the stack users run.

use std::{path::Path, sync::Arc};

use crate::{
    Result,
    config::{EmbeddedConfig, GroupsConfig, TopicsConfig},
    log::{Embedded, Log, layers},
};

/// A fresh embedded log in `dir`, behind [`layers::stack`].
pub async fn embedded(dir: &Path) -> Result<Arc<dyn Log>> {
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
