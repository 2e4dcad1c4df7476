//! Orgs and org tokens: the admin's alone (to anyone else they do not
//! exist). A token is shown once and stored as its hash.

use crate::identity::{Secret, generate_token, hash_hex};
use crate::{Caller, Controller, Error, Resource, Result};
use holdfast_domain::{WorkspaceName, now_millis};
use holdfast_store::{Org, StoreError};
use uuid::Uuid;

fn admin_only(caller: &Caller) -> Result<()> {
    if *caller == Caller::Admin {
        Ok(())
    } else {
        Err(Error::NotFound(Resource::Route))
    }
}

impl Controller {
    pub async fn orgs(&self, caller: &Caller) -> Result<Vec<Org>> {
        admin_only(caller)?;
        Ok(self.store.list_orgs().await?)
    }

    /// The orgs the caller may see: all for the admin, its own for an org.
    pub async fn visible_orgs(&self, caller: &Caller) -> Result<Vec<Org>> {
        Ok(match caller {
            Caller::Admin => self.store.list_orgs().await?,
            Caller::Org(id) => self.store.get_org(*id).await?.into_iter().collect(),
            Caller::Workspace { .. } => Vec::new(),
        })
    }

    pub async fn create_org(&self, caller: &Caller, name: &WorkspaceName) -> Result<Org> {
        admin_only(caller)?;
        self.store
            .insert_org(name.as_str(), now_millis())
            .await
            .map_err(|e| match e {
                e @ StoreError::NameTaken { .. } => Error::OrgExists(e.to_string()),
                other => other.into(),
            })
    }

    /// A new token for the org `id`: the secret (to show once) and the org.
    pub async fn mint_org_token(&self, caller: &Caller, id: Uuid) -> Result<(Secret, Org)> {
        admin_only(caller)?;
        let org = self
            .store
            .get_org(id)
            .await?
            .ok_or(Error::NotFound(Resource::Org))?;
        let token = generate_token("hfo");
        self.store
            .insert_org_token(&hash_hex(token.expose()), org.id, now_millis())
            .await?;
        Ok((token, org))
    }
}
