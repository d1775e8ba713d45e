//! The `courier.v1.Admin` service: topics, consumer groups and regions, for administrators only
//! (`admin_role`). Each call goes through the caller's own authorized log, so the policy and the
//! protection of internal state apply as they do to the data plane, and each is an audit event
//! (`courier::audit`, `event = "admin"`) with its outcome: `ok`, `refused`, or `failed`.

use std::{sync::Arc, time::Duration};

use courier_gateway::{
    auth::{
        Authorizer, Principal,
        policy::{Action, Resource, Subject},
    },
    log::{
        Log, TopicSpec,
        layers::{Authorized, Scope},
    },
    regions::Regions,
};
use tonic::{Code, Request, Response, Status};

use crate::{
    admin_role::require_admin,
    authentication::principal_of,
    convert::{group_to_wire, planned_to_wire, regions_to_wire, topic_to_wire},
    proto::v1::{self as pb, admin_server::Admin},
    streams::peer_of,
    to_status,
};

/// The Admin service over a Log.
#[derive(Debug, Clone)]
pub struct AdminService {
    log: Arc<dyn Log>,
    /// The region router, when `log` is one: the region calls steer it.
    regions: Option<Regions>,
    authorizer: Authorizer,
}

/// One Admin call of an administrator: its log, and what its audit event names.
struct AdminCall {
    log: Arc<dyn Log>,
    principal: Principal,
    peer: String,
    action: &'static str,
    resource: String,
}

impl AdminCall {
    /// Logs the call's audit event with its outcome, and returns the outcome.
    fn finish<T>(self, outcome: Result<T, Status>) -> Result<T, Status> {
        let word = match &outcome {
            Ok(_) => "ok",
            Err(status) if status.code() == Code::PermissionDenied => "refused",
            Err(_) => "failed",
        };
        audit(
            &self.principal,
            &self.peer,
            self.action,
            &self.resource,
            word,
        );
        outcome
    }
}

fn audit(principal: &Principal, peer: &str, action: &str, resource: &str, outcome: &str) {
    tracing::info!(
        target: "courier::audit",
        event = "admin",
        principal = %principal.name,
        peer,
        action,
        resource,
        outcome,
    );
}

impl AdminService {
    /// A service over `log`, with the region calls answered by `regions` when the log is a router;
    /// `authorizer` decides who may call it and what each call may touch.
    pub fn new(log: Arc<dyn Log>, regions: Option<Regions>, authorizer: Authorizer) -> Self {
        Self {
            log,
            regions,
            authorizer,
        }
    }

    /// Starts `action` on `resource` for the caller of `request`, if it may administer.
    fn begin<T>(
        &self,
        request: &Request<T>,
        action: &'static str,
        resource: String,
    ) -> Result<AdminCall, Status> {
        let principal = principal_of(request)?.clone();
        let peer = peer_of(request);
        if let Err(status) = require_admin(&self.authorizer, &principal, "the Admin service") {
            audit(&principal, &peer, action, &resource, "refused");
            return Err(status);
        }
        let log = Arc::new(Authorized::new(
            self.log.clone(),
            self.authorizer.clone(),
            principal.clone(),
            None,
            "grpc",
            Scope::KafkaNames,
        ));
        Ok(AdminCall {
            log,
            principal,
            peer,
            action,
            resource,
        })
    }

    fn regions(&self) -> Result<&Regions, Status> {
        self.regions.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this gateway runs on one log, not on regions (log.kind = \"regions\" configures them)",
            )
        })
    }
}

fn topic(name: &str) -> String {
    Resource::Topic(name).to_string()
}

fn group(name: &str) -> String {
    Resource::Group(name).to_string()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let call = self.begin(&request, "create_topic", topic(&request.get_ref().name))?;
        let request = request.into_inner();
        let spec = TopicSpec {
            name: request.name,
            partitions: (request.partitions > 0).then_some(request.partitions),
            retention_ms: request.retention_ms,
            retention_bytes: request.retention_bytes,
            compacted: false,
        };
        let created = call.log.create_topic(spec).await.map_err(to_status);
        call.finish(created.map(|topic| Response::new(topic_to_wire(topic))))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let call = self.begin(&request, "list_topics", "-".into())?;
        let topics = call.log.list_topics().await.map_err(to_status);
        call.finish(topics.map(|topics| {
            Response::new(pb::ListTopicsResponse {
                topics: topics
                    .into_iter()
                    .map(|t| pb::TopicSummary {
                        name: t.name,
                        partitions: t.partitions as i32,
                    })
                    .collect(),
            })
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let call = self.begin(&request, "describe_topic", topic(&request.get_ref().name))?;
        let described = call
            .log
            .describe_topic(&request.into_inner().name)
            .await
            .map_err(to_status);
        call.finish(described.map(|topic| Response::new(topic_to_wire(topic))))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let call = self.begin(&request, "delete_topic", topic(&request.get_ref().name))?;
        let deleted = call
            .log
            .delete_topic(&request.into_inner().name)
            .await
            .map_err(to_status);
        call.finish(deleted.map(|()| Response::new(pb::DeleteTopicResponse {})))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let call = self.begin(&request, "list_groups", "-".into())?;
        let groups = call.log.list_groups().await.map_err(to_status);
        call.finish(groups.map(|groups| Response::new(pb::ListGroupsResponse { groups })))
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::GroupDescription>, Status> {
        let call = self.begin(&request, "describe_group", group(&request.get_ref().group))?;
        let name = request.into_inner().group;
        let described = if name.is_empty() {
            Err(Status::invalid_argument("group is required"))
        } else {
            call.log.describe_group(&name).await.map_err(to_status)
        };
        call.finish(described.map(|group| Response::new(group_to_wire(group))))
    }

    async fn list_regions(
        &self,
        request: Request<pb::ListRegionsRequest>,
    ) -> Result<Response<pb::RegionsStatus>, Status> {
        let call = self.begin(&request, "list_regions", "-".into())?;
        let status = self.regions().map(|regions| regions.status());
        call.finish(status.map(|status| Response::new(regions_to_wire(status))))
    }

    async fn switch_region(
        &self,
        request: Request<pb::SwitchRegionRequest>,
    ) -> Result<Response<pb::RegionsStatus>, Status> {
        let pb::SwitchRegionRequest {
            region,
            planned,
            planned_timeout_ms,
        } = request.get_ref().clone();
        let resource = match (region.is_empty(), planned) {
            (true, _) => "automatic".to_owned(),
            (false, false) => format!("region {region:?}"),
            (false, true) => format!("region {region:?}, planned"),
        };
        let call = self.begin(&request, "switch_region", resource)?;
        let switched = if planned && !region.is_empty() {
            let timeout = match planned_timeout_ms {
                0 => DEFAULT_PLANNED_TIMEOUT,
                ms => Duration::from_millis(ms),
            };
            self.switch_planned(&call.principal, &region, timeout).await
        } else {
            self.switch(&call.principal, &region).map(regions_to_wire)
        };
        call.finish(switched.map(Response::new))
    }
}

/// How long a planned switch waits for the copies when the request names no timeout.
const DEFAULT_PLANNED_TIMEOUT: Duration = Duration::from_secs(30);

impl AdminService {
    /// Whether `principal` may switch regions.
    fn may_switch(&self, principal: &Principal) -> Result<(), Status> {
        let subject = Subject {
            principal,
            client_id: None,
        };
        self.authorizer
            .check("grpc", subject, Action::SwitchRegion, Resource::Cluster)
            .map_err(to_status)
    }

    /// A planned switch to `region`, if the policy allows it (the same as any switch).
    async fn switch_planned(
        &self,
        principal: &Principal,
        region: &str,
        timeout: Duration,
    ) -> Result<pb::RegionsStatus, Status> {
        self.may_switch(principal)?;
        let regions = self.regions()?;
        let outcome = regions
            .switch_planned(region, timeout)
            .await
            .map_err(to_status)?;
        let mut status = regions_to_wire(regions.status());
        status.planned = Some(planned_to_wire(outcome));
        Ok(status)
    }

    /// Pins traffic to `region` (automatic routing when empty), if the policy allows it.
    fn switch(
        &self,
        principal: &Principal,
        region: &str,
    ) -> Result<courier_gateway::regions::RoutingStatus, Status> {
        self.may_switch(principal)?;
        let regions = self.regions()?;
        if region.is_empty() {
            regions.automatic();
        } else {
            regions.switch_to(region).map_err(to_status)?;
        }
        Ok(regions.status())
    }
}
