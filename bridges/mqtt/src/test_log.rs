//! An embedded log in a temporary directory, for the crate's unit tests.

use std::{path::Path, sync::Arc};

use courier_gateway::{
    config::{EmbeddedConfig, GroupsConfig, TopicsConfig},
    log::{Embedded, Log},
};

/// A fresh embedded log in `dir`.
pub(crate) async fn embedded(dir: &Path) -> courier_gateway::Result<Arc<dyn Log>> {
    Ok(Arc::new(
        Embedded::open(
            &EmbeddedConfig::in_dir(dir),
            TopicsConfig::default(),
            GroupsConfig::default(),
            "test",
        )
        .await?,
    ))
}
