#!/usr/bin/env bash
# An end-to-end check of holdfast's Kubernetes backend on a real cluster
# (kind, or any other), for operators: no cluster could be run where
# holdfast is developed, so this is the part its CI does not cover.
#
# It checks, against a holdfast already deployed from deploy/kubernetes/
# (with HOLDFAST_ERASE_GRACE=0s for the run, so the erase is due at once):
#   1. RBAC: holdfast's service account has exactly the verbs it needs;
#   2. a persist workspace gets a claim with no ownerReferences, whose PV is
#      patched to Retain once bound;
#   3. a restart keeps the claim and the data (rebind: the new Pod mounts
#      the same claim and PV);
#   4. a delete without erase deletes the Pod and keeps the claim; a restore
#      runs a new Pod on it, data intact;
#   5. a delete with erase and a sweep delete the Pod, set the PV to Delete,
#      delete the claim, and the PV is reclaimed (gone).
#
# Usage: HOLDFAST_URL=http://localhost:7420 HOLDFAST_TOKEN=… deploy/kubernetes/smoke.sh
#   (e.g. after `kubectl -n holdfast port-forward svc/holdfast 7420`)
# Needs kubectl (pointed at the cluster), curl and jq.
set -euo pipefail

NS=${HOLDFAST_NS:-holdfast}
URL=${HOLDFAST_URL:-http://localhost:7420}
TOKEN=${HOLDFAST_TOKEN:?set HOLDFAST_TOKEN to the admin token}
SA=system:serviceaccount:$NS:holdfast
NAME=smoke-$(date +%s)

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
api() { curl -fsS -H "Authorization: Bearer $TOKEN" "$@"; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2; shift 2
  for _ in $(seq "$t"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  fail "$what (waited ${t}s)"
}

# 1. RBAC: what holdfast needs, and none of what it must not have.
for v in get list watch create patch delete; do
  kubectl auth can-i "$v" pods -n "$NS" --as "$SA" >/dev/null || fail "RBAC: $v pods missing"
done
kubectl auth can-i get pods --subresource=log -n "$NS" --as "$SA" >/dev/null || fail "RBAC: get pods/log missing"
for v in list watch; do
  kubectl auth can-i "$v" events -n "$NS" --as "$SA" >/dev/null || fail "RBAC: $v events missing"
done
kubectl auth can-i create pods --subresource=exec -n "$NS" --as "$SA" >/dev/null || fail "RBAC: create pods/exec missing"
for v in get list create delete; do
  kubectl auth can-i "$v" persistentvolumeclaims -n "$NS" --as "$SA" >/dev/null || fail "RBAC: $v pvc missing"
done
for v in get list patch; do
  kubectl auth can-i "$v" persistentvolumes --as "$SA" >/dev/null || fail "RBAC: $v pv missing"
done
! kubectl auth can-i deletecollection persistentvolumeclaims -n "$NS" --as "$SA" >/dev/null || fail "RBAC: deletecollection pvc granted"
! kubectl auth can-i delete persistentvolumes --as "$SA" >/dev/null || fail "RBAC: delete pv granted"
ok "RBAC has the least verbs"

# 2. A persist workspace: claim without ownerReferences, PV Retain.
ID=$(api "$URL/workspaces" -d "{\"name\":\"$NAME\",\"runtime\":{\"command\":[\"sh\",\"-c\",\"echo kept >> /data/log; exec sleep 100000\"]},\"compute\":{\"data_persistence\":\"persist\"}}" | jq -r .id)
POD=ws-$ID
wait_for 180 "Pod $POD running" sh -c "kubectl -n $NS get pod $POD -o jsonpath='{.status.phase}' | grep -qx Running"
[ "$(kubectl -n "$NS" get pvc "$POD" -o jsonpath='{.metadata.ownerReferences}')" = "" ] || fail "the claim has ownerReferences"
PV=$(kubectl -n "$NS" get pvc "$POD" -o jsonpath='{.spec.volumeName}')
[ -n "$PV" ] || fail "the claim is not bound"
wait_for 60 "PV $PV patched to Retain" sh -c "kubectl get pv $PV -o jsonpath='{.spec.persistentVolumeReclaimPolicy}' | grep -qx Retain"
CLAIM_UID=$(kubectl -n "$NS" get pvc "$POD" -o jsonpath='{.metadata.uid}')
ok "claim $POD bound to $PV (Retain), no ownerReferences"

# 3. Restart: same claim and PV, data kept.
OLD_POD_UID=$(kubectl -n "$NS" get pod "$POD" -o jsonpath='{.metadata.uid}')
api -X POST "$URL/workspaces/$ID/restart" >/dev/null
wait_for 180 "a new Pod after restart" sh -c "[ \"\$(kubectl -n $NS get pod $POD -o jsonpath='{.metadata.uid}' 2>/dev/null)\" != $OLD_POD_UID ] && kubectl -n $NS get pod $POD -o jsonpath='{.status.phase}' | grep -qx Running"
[ "$(kubectl -n "$NS" get pvc "$POD" -o jsonpath='{.metadata.uid}')" = "$CLAIM_UID" ] || fail "restart replaced the claim"
wait_for 30 "data kept across restart" sh -c "[ \$(kubectl -n $NS exec $POD -- cat /data/log | wc -l) -ge 2 ]"
ok "restart rebinds the same claim and PV; data kept"

# 4. Delete without erase keeps the claim; restore runs on it.
api -X DELETE "$URL/workspaces/$ID" -H "X-Confirm-Name: $NAME" >/dev/null
wait_for 120 "Pod deleted" sh -c "! kubectl -n $NS get pod $POD"
kubectl -n "$NS" get pvc "$POD" >/dev/null || fail "delete without erase removed the claim"
api -X POST "$URL/workspaces/$ID/restore" >/dev/null
wait_for 180 "Pod running after restore" sh -c "kubectl -n $NS get pod $POD -o jsonpath='{.status.phase}' | grep -qx Running"
wait_for 30 "data kept across delete + restore" sh -c "[ \$(kubectl -n $NS exec $POD -- cat /data/log | wc -l) -ge 3 ]"
ok "delete keeps the claim; restore brings the data back"

# 5. Erase: Pod gone, PV set to Delete, claim gone, PV reclaimed.
api -X DELETE "$URL/workspaces/$ID?erase_data=true" -H "X-Confirm-Name: $NAME" >/dev/null
api -X POST "$URL/admin/sweep" -d '{}' >/dev/null
wait_for 180 "claim erased" sh -c "! kubectl -n $NS get pvc $POD"
wait_for 300 "PV $PV reclaimed" sh -c "! kubectl get pv $PV"
ok "erase reclaimed claim $POD and PV $PV"
echo "PASS"
