"""Checks of the Helm chart helm/labgate with the real Helm engine
(helm-python-sdk) and the Kubernetes schemas (kubernetes-validate, strict).

Run through scripts/chart-test.sh, which installs both into a virtualenv.
"""

import copy
import json
import pathlib
import re

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "labgate"
KUBE_VERSION = "1.35.0"
NAMESPACE = "labgate-system"

# Kinds that are not part of Kubernetes itself (CRDs): kubernetes-validate has
# no schema for them, so their shape is asserted by the tests below instead.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate", "HTTPRoute", "BaselineAdminNetworkPolicy"}

PORTAL = {"portal": {"users": ["system:serviceaccount:portal:portal"]}}

# The value sets an operator would use; each is rendered, linted and validated.
VALUE_SETS = {
    "defaults": {
        "gateway": {
            "tls": {"existingSecret": "labgate-gateway-tls"},
            "jwt": {"existingSecret": "portal-keys", "keys": [{"file": "portal.pem", "type": "public"}]},
        },
        "admission": PORTAL,
    },
    "cert-manager": {
        "gateway": {
            "tls": {
                "mode": "certManager",
                "certManager": {"issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}, "dnsNames": ["labs.example.org"]},
            },
            "jwt": {"existingSecret": "portal-keys", "keys": [{"file": "portal.pem", "type": "public", "kid": "p1"}]},
        },
        "admission": {
            **PORTAL,
            "certificates": {"mode": "certManager", "certManager": {"issuerRef": {"name": "cluster-ca", "kind": "ClusterIssuer"}}},
        },
    },
    "ingress-hpa-monitoring": {
        "gateway": {
            "tls": {"existingSecret": "labgate-gateway-tls"},
            "jwt": {"existingSecret": "portal-keys", "keys": [{"file": "portal.pem", "type": "public"}]},
            "ingress": {"enabled": True, "host": "labs.example.org", "tlsSecret": "labs-example-org"},
            "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateway-system"}], "hostnames": ["labs.example.org"]},
            "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
        },
        "admission": PORTAL,
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True},
            "dashboard": {"enabled": True},
        },
        "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
    },
    "existing-secrets": {
        "gateway": {
            "tls": {"mode": "existingSecret", "existingSecret": "wildcard-tls"},
            "jwt": {
                "algorithms": ["HS256", "RS256"],
                "issuers": ["https://portal.example.org"],
                "audiences": ["labgate", "labgate-staff"],
                "existingSecret": "portal-keys",
                "keys": [
                    {"file": "hmac-2026-11", "type": "hmac", "kid": "hmac-2026-11"},
                    {"file": "hmac-2026-12", "type": "hmac", "kid": "hmac-2026-12"},
                    {"file": "portal.pem", "type": "public", "kid": "rsa-1"},
                ],
                "inlinePublicKeys": [
                    {"kid": "staff-1", "pem": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"}
                ],
            },
        },
        "admission": {"portal": {"users": ["system:serviceaccount:portal:portal"], "groups": ["portal-admins"]}},
    },
    "jwks-idp": {
        "gateway": {
            "tls": {"existingSecret": "labgate-gateway-tls"},
            "jwt": {
                "algorithms": ["RS256", "ES256"],
                "jwksUrl": "https://idp.example.org/realms/labs/protocol/openid-connect/certs",
                "existingSecret": "idp-ca",
                "jwksCaFile": "ca.pem",
                "jwksRefreshInterval": "10m",
                "userClaim": "preferred_username",
            },
        },
        "admission": PORTAL,
    },
    "strict-egress": {
        "gateway": {
            "tls": {"mode": "none"},
            "jwt": {"existingSecret": "portal-keys", "keys": [{"file": "portal.pem", "type": "public"}]},
        },
        "admission": {**PORTAL, "egress": "strict", "extraExemptNamespaces": ["monitoring"], "baselineAdminNetworkPolicy": True, "maxConnections": 256},
        "apiServer": {"cidrs": ["10.96.0.1/32", "192.168.10.5/32"]},
    },
    "issuers-strict-egress": {
        "gateway": {
            "tls": {"existingSecret": "labgate-gateway-tls"},
            "jwt": {
                "existingSecret": "idp-files",
                "extraIssuers": [
                    {
                        "issuer": "https://staff-idp.example.org/realms/staff",
                        "audiences": ["labgate"],
                        "jwksUrl": "https://staff-idp.example.org/realms/staff/protocol/openid-connect/certs",
                        "jwksCaFile": "staff-ca.pem",
                        "userClaim": "preferred_username",
                    },
                    {
                        "issuer": "https://students.example.org",
                        "allowAnyAudience": True,
                        "jwksUrl": "https://keycloak.idp.svc:8443/realms/students/protocol/openid-connect/certs",
                        "keys": [
                            {"file": "students.pem", "type": "public", "kid": "students-2026"},
                            {"file": "students-hmac", "type": "hmac"},
                        ],
                    },
                ],
            },
        },
        "admission": PORTAL,
        "apiServer": {"cidrs": ["10.96.0.1/32"]},
        "networkPolicy": {"jwksEgress": {"cidrs": ["203.0.113.10/32"], "peers": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "idp"}}}]}},
    },
}

def documented_rbac():
    """(apiGroup, resource, verb) triples each component's README documents:
    the gateway's ClusterRole in README.md, the admission service's list in
    admission/README.md ("RBAC the service needs")."""
    def yaml_block_after(text, marker):
        rest = text[text.index(marker):]
        block = rest[rest.index("```yaml") + len("```yaml"):]
        return yaml.safe_load(block[: block.index("```")])

    def triples(rules):
        return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}

    readme = (ROOT / "README.md").read_text()
    admission = (ROOT / "admission" / "README.md").read_text()
    return {
        "gateway": triples(yaml_block_after(readme, "## Running against a cluster")["rules"]),
        "admission": triples(yaml_block_after(admission, "### RBAC the service needs")),
    }


def render(values, name="labgate"):
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(values)
    out = chart.render(values, name=name, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append((path, doc))
    return objects, out


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request):
    values = VALUE_SETS[request.param]
    objects, raw = render(copy.deepcopy(values))
    return request.param, values, objects, raw


def kinds(objects):
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for _, o in objects)


def test_lints_clean_in_strict_mode(rendered):
    name, values, _, _ = rendered
    report = helm.lint(str(CHART), copy.deepcopy(values), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, f"{name}: {problems}"


def test_every_object_is_valid_against_the_kubernetes_schemas(rendered):
    name, _, objects, _ = rendered
    checked = 0
    for path, obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{name}: {path} {obj['kind']}/{obj['metadata']['name']}: {err.message}")
        checked += 1
    assert checked >= 15, f"{name}: only {checked} objects rendered: {kinds(objects)}"
    print(f"{name}: {checked} objects valid: {kinds(objects)}")


def test_rbac_has_no_wildcards_and_only_documented_verbs(rendered):
    name, _, objects, _ = rendered
    roles = [o for _, o in objects if o["kind"] in ("Role", "ClusterRole")]
    assert roles
    documented = documented_rbac()
    for role in roles:
        component = role["metadata"]["labels"]["app.kubernetes.io/component"]
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{name}: wildcard in {role['metadata']['name']} {field}"
                assert not any("*" in v for v in rule.get(field, [])), f"{name}: wildcard in {field}"
            granted = {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
            extra = granted - documented[component]
            assert not extra, f"{name}: {role['metadata']['name']} grants what the README does not document: {extra}"
            # Writes to Secrets or webhook configurations are limited by name,
            # except create (RBAC cannot limit create by name).
            if set(rule["resources"]) & {"secrets", "validatingwebhookconfigurations"}:
                assert role["kind"] == "Role" or "secrets" not in rule["resources"], "Secrets only in a namespaced Role"
                if set(rule["verbs"]) - {"create"}:
                    assert rule.get("resourceNames"), f"{name}: {rule} must name its objects"
    gateway_rules = [r for ro in roles if ro["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway" for r in ro["rules"]]
    granted = {(g, res, v) for r in gateway_rules for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}
    assert granted == {
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        ("subresources.kubevirt.io", "virtualmachineinstances/vnc", "get"),
        ("subresources.kubevirt.io", "virtualmachineinstances/console", "get"),
        ("subresources.kubevirt.io", "virtualmachineinstances/vnc/screenshot", "get"),
        ("kubevirt.io", "virtualmachineinstances", "list"),
        ("kubevirt.io", "virtualmachineinstances", "watch"),
        ("kubevirt.io", "virtualmachines", "list"),
        ("kubevirt.io", "virtualmachines", "watch"),
    }


def pods(objects):
    for _, obj in objects:
        if obj["kind"] == "Deployment":
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield obj["metadata"]["name"], obj["spec"]


def test_pods_meet_the_restricted_pod_security_standard(rendered):
    name, _, objects, _ = rendered
    seen = 0
    for pod_name, spec in pods(objects):
        seen += 1
        psc = spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, pod_name
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", pod_name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), pod_name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, pod_name
            assert sc["readOnlyRootFilesystem"] is True, pod_name
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), pod_name
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], pod_name
        for v in spec.get("volumes", []):
            assert "hostPath" not in v, pod_name
    assert seen == 3, f"{name}: gateway, admission and the test pod"


def deployment(objects, component):
    (dep,) = [o for _, o in objects if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    return dep


def test_probes_tokens_and_drain(rendered):
    name, values, objects, _ = rendered
    for component in ("gateway", "admission"):
        spec = deployment(objects, component)["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert spec["automountServiceAccountToken"] is True
    # The test pod and the service accounts do not mount tokens by default.
    for _, o in objects:
        if o["kind"] == "ServiceAccount":
            assert o["automountServiceAccountToken"] is False
        if o["kind"] == "Pod":
            assert o["spec"]["automountServiceAccountToken"] is False
    gw = deployment(objects, "gateway")["spec"]["template"]["spec"]
    args = gw["containers"][0]["args"]
    grace = values["gateway"].get("shutdownGrace", "30s")
    assert f"--shutdown-grace={grace}" in args
    assert gw["terminationGracePeriodSeconds"] == int(grace.rstrip("s")) + 15
    spread = {t["topologyKey"] for t in gw["topologySpreadConstraints"]}
    assert spread == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


def test_gateway_flags_follow_the_values(rendered):
    name, values, objects, _ = rendered
    args = deployment(objects, "gateway")["spec"]["template"]["spec"]["containers"][0]["args"]
    jwt = values["gateway"]["jwt"]
    for key in jwt.get("keys", []):
        flag = "--jwt-hmac-secret-file" if key["type"] == "hmac" else "--jwt-public-key-file"
        prefix = f"{key['kid']}=" if key.get("kid") else ""
        assert f"{flag}={prefix}/etc/labgate/jwt/{key['file']}" in args, args
    audiences = jwt.get("audiences", ["labgate"])
    assert f"--jwt-audience={','.join(audiences)}" in args
    assert f"--jwt-user-claim={jwt.get('userClaim', 'sub')}" in args
    if jwt.get("jwksUrl"):
        assert f"--jwt-jwks-url={jwt['jwksUrl']}" in args
        assert f"--jwt-jwks-refresh-interval={jwt.get('jwksRefreshInterval', '5m')}" in args
    else:
        assert not any(a.startswith("--jwt-jwks") for a in args), args
    if jwt.get("jwksCaFile"):
        assert f"--jwt-jwks-ca-file=/etc/labgate/jwt/{jwt['jwksCaFile']}" in args
        gw = deployment(objects, "gateway")["spec"]["template"]["spec"]
        assert {"name": "jwt", "secret": {"secretName": jwt["existingSecret"]}} in gw["volumes"]
    # Behind an Ingress or a SNAT'ing Service all clients share an address:
    # the per-address pre-auth cap is off unless the values turn it on.
    limits = values["gateway"].get("limits", {})
    per_address = limits.get("maxPreauthConnectionsPerAddress", 0)
    assert f"--max-preauth-connections-per-address={per_address}" in args, args
    total = limits.get("maxPreauthConnections", 1024)
    assert f"--max-preauth-connections={total}" in args, args
    if values["gateway"]["tls"].get("mode") == "none":
        assert "--insecure-plain-http" in args and not any(a.startswith("--tls-") for a in args)
    else:
        assert "--tls-cert-file=/etc/labgate/tls/tls.crt" in args


def test_admission_connection_cap_follows_the_values(rendered):
    name, values, objects, _ = rendered
    args = deployment(objects, "admission")["spec"]["template"]["spec"]["containers"][0]["args"]
    cap = values.get("admission", {}).get("maxConnections", 1024)
    assert f"--max-connections={cap}" in args, args


def test_the_webhook_is_the_one_in_policies(rendered):
    name, values, objects, _ = rendered
    shipped = yaml.safe_load((ROOT / "policies" / "manifests" / "validating-webhook.yaml").read_text())
    (vwc,) = [o for _, o in objects if o["kind"] == "ValidatingWebhookConfiguration"]
    assert len(vwc["webhooks"]) == len(shipped["webhooks"])
    for ours, theirs in zip(vwc["webhooks"], shipped["webhooks"]):
        assert ours["clientConfig"]["service"]["name"] == "labgate-admission"
        assert ours["clientConfig"]["service"]["namespace"] == NAMESPACE
        for key in set(theirs) | set(ours):
            if key in ("clientConfig", "timeoutSeconds", "namespaceSelector"):
                continue
            assert ours.get(key) == theirs.get(key), f"{name}: webhook {theirs['name']} field {key} differs from policies/"
        assert "caBundle" not in ours["clientConfig"], "the caBundle is never rendered (it would be reset on upgrade)"
    cert_manager = values["admission"].get("certificates", {}).get("mode") == "certManager"
    annotations = vwc["metadata"].get("annotations", {})
    assert ("cert-manager.io/inject-ca-from" in annotations) == cert_manager


@pytest.mark.parametrize("manifest", ["validating-webhook.yaml", "baseline-admin-network-policy.yaml"])
def test_chart_copies_match_policies(manifest):
    shipped = (ROOT / "policies" / "manifests" / manifest).read_text()
    copy_in_chart = (CHART / "files" / manifest).read_text()
    assert copy_in_chart == shipped, "run scripts/sync-chart-policies.sh"


def test_exempt_namespaces_and_the_baseline_follow_the_values(rendered):
    name, values, objects, _ = rendered
    a = values["admission"]
    args = deployment(objects, "admission")["spec"]["template"]["spec"]["containers"][0]["args"]
    for ns in a.get("extraExemptNamespaces", []):
        assert f"--exempt-namespace={ns}" in args
    (vwc,) = [o for _, o in objects if o["kind"] == "ValidatingWebhookConfiguration"]
    for wh in vwc["webhooks"]:
        for expr in wh.get("namespaceSelector", {}).get("matchExpressions", []):
            if expr["key"] == "kubernetes.io/metadata.name":
                assert expr["values"] == ["kube-system", NAMESPACE] + a.get("extraExemptNamespaces", [])
    banp = [o for _, o in objects if o["kind"] == "BaselineAdminNetworkPolicy"]
    if a.get("baselineAdminNetworkPolicy"):
        shipped = yaml.safe_load((ROOT / "policies" / "manifests" / "baseline-admin-network-policy.yaml").read_text())
        assert len(banp) == 1 and banp[0]["spec"] == shipped["spec"] and banp[0]["metadata"]["name"] == "default"
    else:
        assert not banp


def test_nothing_is_regenerated_on_upgrade(rendered):
    name, values, _, raw = rendered
    for tpl in (CHART / "templates").rglob("*"):
        if tpl.is_file():
            text = tpl.read_text()
            for fn in ("genCA", "genSelfSignedCert", "genSignedCert", "randAlphaNum", "randAscii", "uuidv4", "now"):
                assert not re.search(r"\b" + fn + r"\b", text), f"{tpl.name} uses {fn}"
    _, again = render(copy.deepcopy(values))
    assert again == raw, f"{name}: two renders differ"


def test_optional_objects_follow_their_switches(rendered):
    name, values, objects, _ = rendered
    present = {o["kind"] for _, o in objects}
    m = values.get("metrics", {})
    g = values["gateway"]
    assert ("Ingress" in present) == g.get("ingress", {}).get("enabled", False)
    assert ("HTTPRoute" in present) == g.get("httpRoute", {}).get("enabled", False)
    assert ("HorizontalPodAutoscaler" in present) == g.get("autoscaling", {}).get("enabled", False)
    assert ("ServiceMonitor" in present) == m.get("serviceMonitor", {}).get("enabled", False)
    assert ("PrometheusRule" in present) == m.get("prometheusRule", {}).get("enabled", False)
    certs = [o for _, o in objects if o["kind"] == "Certificate"]
    expected = int(g["tls"].get("mode") == "certManager") + int(values["admission"].get("certificates", {}).get("mode") == "certManager")
    assert len(certs) == expected
    assert {"PodDisruptionBudget", "NetworkPolicy", "Service", "Deployment"} <= present
    if "HorizontalPodAutoscaler" in present:
        assert "replicas" not in deployment(objects, "gateway")["spec"]
    else:
        assert deployment(objects, "gateway")["spec"]["replicas"] == 2
    ingress = [o for _, o in objects if o["kind"] == "Ingress"]
    for ing in ingress:
        assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
        assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$uri"
        # Sessions, the viewer page and its assets all reach the gateway.
        paths = {p["path"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]}
        assert paths == {"/labs/", "/view/", "/assets/"}
    for route in [o for _, o in objects if o["kind"] == "HTTPRoute"]:
        prefixes = {m["path"]["value"] for r in route["spec"]["rules"] for m in r["matches"]}
        assert prefixes == {"/labs/", "/view/", "/assets/"}


def test_own_network_policies_allow_only_what_is_needed(rendered):
    name, values, objects, _ = rendered
    nps = [o for _, o in objects if o["kind"] == "NetworkPolicy"]
    assert len(nps) == 2
    cidrs = values.get("apiServer", {}).get("cidrs", [])
    for np in nps:
        assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
        api, dns, *idp = np["spec"]["egress"]
        # Only the gateway fetches JWK sets, and only when a URL is configured.
        wants_idp = "gateway" in np["metadata"]["name"] and jwks_urls(values)
        assert len(idp) == (1 if wants_idp else 0), np["spec"]["egress"]
        assert {p["port"] for p in api["ports"]} == {443, 6443}
        if cidrs:
            assert [t["ipBlock"]["cidr"] for t in api["to"]] == cidrs
        assert {p["port"] for p in dns["ports"]} == {53}
        metrics_rule = np["spec"]["ingress"][1]
        assert metrics_rule["from"], "metrics are never open to everyone"


def jwks_urls(values):
    jwt = values.get("gateway", {}).get("jwt", {})
    urls = [jwt["jwksUrl"]] if jwt.get("jwksUrl") else []
    return urls + [i["jwksUrl"] for i in jwt.get("extraIssuers", []) if i.get("jwksUrl")]


def gateway_policy(objects):
    return next(o for _, o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("gateway"))


def test_the_identity_providers_are_reachable_through_the_network_policy(rendered):
    name, values, objects, _ = rendered
    urls = jwks_urls(values)
    if not urls:
        return
    rule = gateway_policy(objects)["spec"]["egress"][2]
    wanted = values.get("networkPolicy", {}).get("jwksEgress", {})
    ports = {int(re.search(r"^https://[^/]+?(?::(\d+))?(?:/|$)", u).group(1) or 443) for u in urls}
    assert {p["port"] for p in rule["ports"]} == ports, rule
    assert all(p["protocol"] == "TCP" for p in rule["ports"])
    if wanted.get("cidrs") or wanted.get("peers"):
        assert rule["to"] == [{"ipBlock": {"cidr": c}} for c in wanted.get("cidrs", [])] + wanted.get("peers", [])
    else:
        # The safe default: the URLs' ports only, to any address (a policy cannot name a host).
        assert "to" not in rule


def test_jwks_egress_ports_can_be_given_and_without_a_url_nothing_is_opened():
    base = VALUE_SETS["strict-egress"]
    objects, _ = render(merge(copy.deepcopy(base), {}))
    assert len(gateway_policy(objects)["spec"]["egress"]) == 2
    objects, _ = render(merge(copy.deepcopy(base), {
        "gateway": {"jwt": {"jwksUrl": "https://idp.example.org/certs"}},
        "networkPolicy": {"jwksEgress": {"ports": [8080, 8443]}},
    }))
    rule = gateway_policy(objects)["spec"]["egress"][2]
    assert [p["port"] for p in rule["ports"]] == [8080, 8443]


def test_extra_issuers_become_the_gateways_issuers_file(rendered):
    name, values, objects, raw = rendered
    extra = values.get("gateway", {}).get("jwt", {}).get("extraIssuers", [])
    maps = [o for _, o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-issuers")]
    gw = deployment(objects, "gateway")
    container = gw["spec"]["template"]["spec"]["containers"][0]
    flag = "--jwt-issuers-file=/etc/labgate/issuers/issuers.yaml"
    if not extra:
        assert not maps and flag not in container["args"]
        return
    assert flag in container["args"]
    (cm,) = maps
    assert {"name": "jwt-issuers", "mountPath": "/etc/labgate/issuers", "readOnly": True} in container["volumeMounts"]
    volumes = {v["name"]: v for v in gw["spec"]["template"]["spec"]["volumes"]}
    assert volumes["jwt-issuers"]["configMap"]["name"] == cm["metadata"]["name"]
    assert volumes["jwt"]["secret"]["secretName"] == values["gateway"]["jwt"]["existingSecret"]
    assert "checksum/issuers" in gw["spec"]["template"]["metadata"]["annotations"]
    # The format of gateway/src/token/issuers.rs (deny_unknown_fields there).
    allowed = {"issuer", "audiences", "allowAnyAudience", "hmacSecretFiles", "publicKeyFiles", "jwksFile", "jwksUrl", "jwksCaFile", "userClaim"}
    issuers = yaml.safe_load(cm["data"]["issuers.yaml"])["issuers"]
    assert len(issuers) == len(extra)
    for got, want in zip(issuers, extra):
        assert set(got) <= allowed, got
        assert got["issuer"] == want["issuer"]
        assert got.get("audiences", []) == want.get("audiences", [])
        assert got.get("allowAnyAudience", False) == want.get("allowAnyAudience", False)
        assert got.get("jwksUrl") == want.get("jwksUrl")
        assert got.get("userClaim") == want.get("userClaim")
        if want.get("jwksCaFile"):
            assert got["jwksCaFile"] == f"/etc/labgate/jwt/{want['jwksCaFile']}"
        for kind, field in (("public", "publicKeyFiles"), ("hmac", "hmacSecretFiles")):
            files = [(f"{k['kid']}=" if k.get("kid") else "") + f"/etc/labgate/jwt/{k['file']}" for k in want.get("keys", []) if k["type"] == kind]
            assert got.get(field, []) == files


def test_values_reject_typos_and_wrong_types():
    chart = helm.Chart.load(str(CHART))
    base = VALUE_SETS["defaults"]
    for bad in (
        {"gateway": {"replicsa": 3}},
        {"gateway": {"replicas": "two"}},
        {"gateway": {"tls": {"mode": "letsencrypt"}}},
        {"admission": {"egress": "open"}},
        {"admission": {"maxConnections": 0}},
        {"admission": {"maxConnections": "many"}},
        {"gateway": {"jwt": {"algorithms": ["none"]}}},
        {"gateway": {"jwt": {"keys": [{"file": "../etc/passwd", "type": "public"}]}}},
        {"gateway": {"jwt": {"jwksUrl": "http://idp.example.org/certs"}}},
        {"gateway": {"jwt": {"jwksCaFile": "../ca.pem"}}},
        {"gateway": {"jwt": {"userClaim": ""}}},
        {"gateway": {"jwt": {"extraIssuers": [{"audiences": ["x"], "jwksUrl": "https://idp/certs"}]}}},
        {"gateway": {"jwt": {"extraIssuers": [{"issuer": "a", "audiences": ["x"], "jwksURL": "https://idp/certs"}]}}},
        {"gateway": {"jwt": {"extraIssuers": [{"issuer": "a", "audiences": ["x"], "jwksUrl": "http://idp/certs"}]}}},
        {"gateway": {"jwt": {"extraIssuers": [{"issuer": "a", "audiences": ["x"], "keys": [{"file": "../k", "type": "public"}]}]}}},
        {"networkPolicy": {"jwksEgress": {"cidrs": ["idp.example.org"]}}},
        {"networkPolicy": {"jwksEgress": {"ports": [0]}}},
        {"metrics": {"prometheusRule": {"enable": True}}},
    ):
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(merge(copy.deepcopy(base), bad))


def test_missing_required_choices_fail_with_a_clear_message():
    chart = helm.Chart.load(str(CHART))
    cases = [
        ({"admission": {"portal": {"users": []}}}, "admission.portal.users"),
        ({"gateway": {"jwt": {"keys": [], "existingSecret": ""}}}, "at least one key"),
        ({"gateway": {"tls": {"existingSecret": ""}}}, "gateway.tls.existingSecret"),
        ({"gateway": {"jwt": {"audiences": []}}}, "allowAnyAudience"),
        ({"gateway": {"jwt": {"jwksCaFile": "ca.pem", "jwksUrl": "https://idp/certs", "keys": [], "existingSecret": ""}}}, "jwksCaFile"),
        ({"gateway": {"jwt": {"extraIssuers": [{"issuer": "a", "jwksUrl": "https://idp/certs"}]}}}, "give audiences"),
        ({"gateway": {"jwt": {"extraIssuers": [{"issuer": "a", "audiences": ["x"], "allowAnyAudience": True, "jwksUrl": "https://idp/certs"}]}}}, "not both"),
        ({"gateway": {"jwt": {"extraIssuers": [{"issuer": "a", "audiences": ["x"]}]}}}, "has no keys"),
        ({"gateway": {"jwt": {"keys": [], "existingSecret": "", "extraIssuers": [{"issuer": "a", "audiences": ["x"], "keys": [{"file": "k.pem", "type": "public"}]}]}}}, "existingSecret, which is empty"),
    ]
    for override, message in cases:
        values = merge(copy.deepcopy(VALUE_SETS["defaults"]), override)
        with pytest.raises(helm.HelmError) as err:
            chart.render(values, name="labgate", namespace=NAMESPACE)
        assert message in str(err.value)


def test_every_value_is_commented():
    """Every key has a comment right above it, or belongs to a small block
    (e.g. issuerRef's name/kind/group) whose key is commented."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys = []  # (indent, commented)
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        prev = next((l.strip() for l in reversed(lines[:i]) if l.strip()), "")
        commented = prev.startswith("#")
        parent = next((c for ind, c in reversed(keys) if ind < indent), None)
        assert commented or parent, f"values.yaml:{i + 1} {m.group(2)} has no comment"
        keys.append((indent, commented))


def test_notes_tell_how_to_create_a_lab_and_open_it():
    chart = helm.Chart.load(str(CHART))
    values = copy.deepcopy(VALUE_SETS["ingress-hpa-monitoring"])
    out = chart.render(values, name="labgate", namespace=NAMESPACE)
    notes = out["labgate/templates/NOTES.txt"]
    assert "labgate.io/owner-hash" in notes and "sha256sum" in notes
    # The viewer link with the token in the fragment; websocket URLs without a token in the path.
    assert "https://labs.example.org/view/lab-alice-net101#token=<token>" in notes
    assert "wss://labs.example.org/labs/lab-alice-net101/<vm>/vnc\n" in notes
    assert "/<token>" not in notes
    assert "helm test labgate" in notes


def test_dashboard_is_grafana_json():
    board = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert board["panels"] and all(p["targets"] for p in board["panels"])


def merge(base, override):
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def test_image_and_chart_agree():
    """The Containerfile builds with the script CI runs, stages the binaries
    where the chart starts them, and runs as the user the chart sets."""
    containerfile = (ROOT / "Containerfile").read_text()
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    assert "RUN bash scripts/build-image.sh --root /image-root" in containerfile
    assert "cargo build --locked --release" in script
    assert "USER 65532:65532" in containerfile
    assert 'install -d "$root/usr/local/bin"' in script
    objects, _ = render(copy.deepcopy(VALUE_SETS["defaults"]))
    for component, binary in (("gateway", "labgate-gateway"), ("admission", "labgate-admission")):
        spec = deployment(objects, component)["spec"]["template"]["spec"]
        assert spec["containers"][0]["command"] == [f"/usr/local/bin/{binary}"]
        assert spec["securityContext"]["runAsUser"] == 65532
