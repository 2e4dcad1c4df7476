//! Organisations: the tenancy boundary of the platform API.

use crate::{Store, StoreResult, parse_uuid};
use holdfast_domain::Millis;
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub id: Uuid,
    pub name: String,
    pub is_default: bool,
    pub created_at: Millis,
}

impl Org {
    fn from_row(row: &AnyRow) -> StoreResult<Self> {
        let is_default: i64 = row.try_get("is_default")?;
        Ok(Org {
            id: parse_uuid(row, "id")?,
            name: row.try_get("name")?,
            is_default: is_default != 0,
            created_at: row.try_get("created_at")?,
        })
    }
}

impl Store {
    /// The default org, created on first call.
    #[tracing::instrument(skip_all, name = "store.default_org")]
    pub async fn default_org(&self, now: Millis) -> StoreResult<Org> {
        if let Some(row) =
            sqlx::query("SELECT id, name, is_default, created_at FROM orgs WHERE is_default = 1")
                .fetch_optional(self.read())
                .await?
        {
            return Org::from_row(&row);
        }
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO orgs (id, name, is_default, created_at) VALUES ($1, 'default', 1, $2)",
        )
        .bind(id.to_string())
        .bind(now)
        .execute(&*self.write())
        .await?;
        Ok(Org {
            id,
            name: "default".into(),
            is_default: true,
            created_at: now,
        })
    }

    pub async fn get_org(&self, id: Uuid) -> StoreResult<Option<Org>> {
        let row = sqlx::query("SELECT id, name, is_default, created_at FROM orgs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.read())
            .await?;
        row.as_ref().map(Org::from_row).transpose()
    }
}

impl Store {
    /// Creates an org. A name already taken is a `Conflict`.
    pub async fn insert_org(&self, name: &str, now: Millis) -> StoreResult<Org> {
        let id = Uuid::new_v4();
        let done = sqlx::query(
            "INSERT INTO orgs (id, name, is_default, created_at) VALUES ($1, $2, 0, $3) ON CONFLICT DO NOTHING",
        )
        .bind(id.to_string())
        .bind(name.to_owned())
        .bind(now)
        .execute(&*self.write())
        .await?;
        if done.rows_affected() != 1 {
            return Err(crate::StoreError::NameTaken {
                kind: "an org",
                name: name.to_owned(),
            });
        }
        Ok(Org {
            id,
            name: name.to_owned(),
            is_default: false,
            created_at: now,
        })
    }

    pub async fn list_orgs(&self) -> StoreResult<Vec<Org>> {
        let rows = sqlx::query(
            "SELECT id, name, is_default, created_at FROM orgs ORDER BY created_at, name",
        )
        .fetch_all(self.read())
        .await?;
        rows.iter().map(Org::from_row).collect()
    }
}
