//! The `courier.v1.Admin` service: topics and consumer groups.

use std::sync::Arc;

use courier_gateway::{
    log::{Log, TopicSpec},
    regions::Regions,
};
use tonic::{Request, Response, Status};

use crate::{
    convert::{group_to_wire, regions_to_wire, topic_to_wire},
    proto::v1::{self as pb, admin_server::Admin},
    to_status,
};

/// The Admin service over a Log.
#[derive(Debug, Clone)]
pub struct AdminService {
    log: Arc<dyn Log>,
    /// The region router, when `log` is one: the region calls steer it.
    regions: Option<Regions>,
}

impl AdminService {
    /// A service over `log`, with the region calls answered by `regions` when the log is a router.
    pub fn new(log: Arc<dyn Log>, regions: Option<Regions>) -> Self {
        Self { log, regions }
    }

    fn regions(&self) -> Result<&Regions, Status> {
        self.regions.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this gateway runs on one log, not on regions (log.kind = \"regions\" configures them)",
            )
        })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let request = request.into_inner();
        let spec = TopicSpec {
            name: request.name,
            partitions: (request.partitions > 0).then_some(request.partitions),
            retention_ms: request.retention_ms,
            retention_bytes: request.retention_bytes,
            compacted: false,
        };
        Ok(Response::new(topic_to_wire(
            self.log.create_topic(spec).await.map_err(to_status)?,
        )))
    }

    async fn list_topics(
        &self,
        _: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let topics = self.log.list_topics().await.map_err(to_status)?;
        Ok(Response::new(pb::ListTopicsResponse {
            topics: topics
                .into_iter()
                .map(|t| pb::TopicSummary {
                    name: t.name,
                    partitions: t.partitions as i32,
                })
                .collect(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        Ok(Response::new(topic_to_wire(
            self.log
                .describe_topic(&request.into_inner().name)
                .await
                .map_err(to_status)?,
        )))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        self.log
            .delete_topic(&request.into_inner().name)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_groups(
        &self,
        _: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        Ok(Response::new(pb::ListGroupsResponse {
            groups: self.log.list_groups().await.map_err(to_status)?,
        }))
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::GroupDescription>, Status> {
        let group = request.into_inner().group;
        if group.is_empty() {
            return Err(Status::invalid_argument("group is required"));
        }
        Ok(Response::new(group_to_wire(
            self.log.describe_group(&group).await.map_err(to_status)?,
        )))
    }

    async fn list_regions(
        &self,
        _: Request<pb::ListRegionsRequest>,
    ) -> Result<Response<pb::RegionsStatus>, Status> {
        Ok(Response::new(regions_to_wire(self.regions()?.status())))
    }

    async fn switch_region(
        &self,
        request: Request<pb::SwitchRegionRequest>,
    ) -> Result<Response<pb::RegionsStatus>, Status> {
        let regions = self.regions()?;
        let region = request.into_inner().region;
        if region.is_empty() {
            regions.automatic();
        } else {
            regions.switch_to(&region).map_err(to_status)?;
        }
        Ok(Response::new(regions_to_wire(regions.status())))
    }
}
