# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := demo_output
RUNNER := --runner DirectRunner
# The demo trains with the product's defaults, the ones bench/ measures (the run that made docs/images stopped
# after 102 epochs, all 30 held-back clips right).
# Extra model.train flags go here, e.g. `make demo DEMO_TRAIN_FLAGS="--epochs 40 --start-from-epoch 10"`.
DEMO_TRAIN_FLAGS ?=
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: install browser graphviz iproute2 labelstudio prism flink spark demo images test bench clean mutants

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Pinned versions live in setup.py (the same list Beam workers install with --setup_file).
$(STAMP): setup.py | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The whole pipeline, offline: sample clips -> features -> trained model -> evaluation -> labels.
demo: $(STAMP) graphviz
	rm -rf $(DEMO)
	$(PY) -m tools.sample_videos $(DEMO)/clips/train --per-class 30 --seed 1
	$(PY) -m tools.sample_videos $(DEMO)/clips/heldback --per-class 5 --seed 2 --first-index 30
	$(PY) -m beam_jobs.featurize $(RUNNER) --input $(DEMO)/clips/train --output $(DEMO)/features/train \
	    --weights random --num-shards 4
	$(PY) -m beam_jobs.featurize $(RUNNER) --input $(DEMO)/clips/heldback --output $(DEMO)/features/heldback \
	    --weights random
	$(PY) -m model.train --train $(DEMO)/features/train --test $(DEMO)/features/heldback \
	    --output $(DEMO)/model --seed 1 $(DEMO_TRAIN_FLAGS)
	$(PY) -m model.evaluate --model $(DEMO)/model --data $(DEMO)/features/heldback --output $(DEMO)/evaluation
	$(PY) -m beam_jobs.predict $(RUNNER) --input $(DEMO)/clips/heldback --model $(DEMO)/model \
	    --output $(DEMO)/labels --per-video --show 4
	@echo
	@echo "Demo finished. Outputs:"
	@echo "  clips           $(DEMO)/clips/{train,heldback}/<class>/*"
	@echo "  feature records $(DEMO)/features/{train,heldback}/ (features-*.tfrecord, labels.txt, manifest.json)"
	@echo "  model           $(DEMO)/model/ (README.md: its model card; model.keras, saved_model/, metrics.json, pictures)"
	@echo "  evaluation      $(DEMO)/evaluation/ (evaluation.json, confusion_matrix.png)"
	@echo "  labels          $(DEMO)/labels/labels.csv, per_video/, failures.csv, manifest.json"

# Speed, memory, size and accuracy benchmarks; writes bench/RESULTS.md and bench/results.json.
bench: $(STAMP)
	$(PY) -m bench.run

# The report test drives Debian's chromium headless; installed here when missing and apt-get can run
# (as root). Without it that one test skips and says why.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the report test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium fonts-dejavu-core >/dev/null; \
	  else echo "chromium not installed and apt-get unavailable: the browser test will skip"; fi; \
	fi

# The model card's plot of the layers (keras.utils.plot_model) needs Graphviz's dot besides pydot (setup.py);
# installed here when missing and apt-get can run (as root). Without it the card says how to get the plot.
graphviz:
	@if ! command -v dot >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing graphviz for the model plot"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      graphviz >/dev/null; \
	  else echo "graphviz not installed and apt-get unavailable: model directories will have no model plot"; fi; \
	fi

# The multi-host test (tests/test_multihost.py) makes its hosts with `ip netns` and veth pairs, as root;
# iproute2 is installed here when missing and apt-get can run. Without it, or without root, that test skips.
iproute2:
	@if ! command -v ip >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing iproute2 for the multi-host test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      iproute2 >/dev/null; \
	  else echo "ip (iproute2) not installed and apt-get unavailable: the multi-host test will skip"; fi; \
	fi

# Label Studio for the review round trip (tests/test_label_studio.py, tools/review_screenshot.py): a venv of its
# own, since it pins its own Django stack, and an empty database migrated once into a template that each test
# server copies (migrating takes a minute, starting from the copy seconds). When it cannot be installed (no
# registry) the make goes on and that test skips.
LABEL_STUDIO_VERSION := 1.23.2
LS_VENV := .labelstudio-venv
LS_STAMP := $(LS_VENV)/.installed-$(LABEL_STUDIO_VERSION)

labelstudio: $(LS_STAMP)

$(LS_STAMP):
	@echo "installing label-studio $(LABEL_STUDIO_VERSION) into $(LS_VENV)/ for the review round trip test"
	@rm -rf $(LS_VENV)
	@if $(PYTHON) -m venv $(LS_VENV) && $(LS_VENV)/bin/python -m pip install --quiet --upgrade pip \
	    && $(LS_VENV)/bin/python -m pip install --quiet label-studio==$(LABEL_STUDIO_VERSION) \
	    && LABEL_STUDIO_LATEST_VERSION_CHECK=false LABEL_STUDIO_COLLECT_ANALYTICS=false LABEL_STUDIO_SENTRY_DSN= \
	       $(LS_VENV)/bin/label-studio version --data-dir $(LS_VENV)/template >$(LS_VENV)/template.log 2>&1; then \
	  touch $@; \
	else echo "label-studio could not be installed: the review round trip test will skip"; rm -rf $(LS_VENV); fi

# Prism, Beam's local runner (a Go program; `--runner DirectRunner` runs on it when it can find it), built with
# the machine's Go at the version of the apache-beam pin in setup.py, into a cache folder of its own:
# $(PRISM_CACHE)/v<version>/prism, where tools/prism.py (the tests, the runners benchmark) looks. Never under
# ~/.apache_beam, which would switch every DirectRunner job on this machine to Prism. Without Go the Prism
# tests skip and say why.
BEAM_VERSION := $(shell sed -n 's/^ *"apache-beam\[gcp\]==\([0-9][0-9.]*\)".*/\1/p' setup.py)
export PRISM_CACHE ?= $(HOME)/.cache/video-annotation/prism
PRISM := $(PRISM_CACHE)/v$(BEAM_VERSION)/prism
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)

prism:
	@test -n "$(BEAM_VERSION)" || { echo "no apache-beam[gcp]==VERSION pin found in setup.py"; exit 1; }
	@if [ -x "$(PRISM)" ]; then :; \
	elif [ -x "$(GO)" ]; then \
	  echo "building Prism v$(BEAM_VERSION) with $$($(GO) version) into $(dir $(PRISM))"; \
	  rm -rf "$(PRISM).tmp" && mkdir -p "$(PRISM).tmp" && \
	  GOBIN="$(PRISM).tmp" "$(GO)" install github.com/apache/beam/sdks/v2/go/cmd/prism@v$(BEAM_VERSION) && \
	  mv "$(PRISM).tmp/prism" "$(PRISM)" && rm -rf "$(PRISM).tmp"; \
	else echo "Go is not installed: the Prism tests will skip (install Go 1.26 or later, then make prism)"; fi

# A jar from Maven Central, fetched once into a cache: $(call maven_jar,GROUP:ARTIFACT:VERSION,DEST.jar). Without
# Java, nothing; without Maven, or when Central does not serve it, one line, and Maven's answer kept in
# DEST.jar.maven.log; the make goes on, and the tests that need the jar skip and say why.
define maven_jar
	@if [ -f "$(2)" ] || ! command -v java >/dev/null 2>&1; then :; \
	elif ! command -v mvn >/dev/null 2>&1; then \
	  echo "Maven is not installed: no $(1) (install Maven, then make again)"; \
	else \
	  rm -rf "$(2).tmp" && mkdir -p "$(2).tmp" && \
	  if mvn -q -B dependency:copy -Dartifact=$(1) -DoutputDirectory="$(2).tmp" >"$(2).maven.log" 2>&1; then \
	    mv "$(2).tmp"/*.jar "$(2)" && rm -rf "$(2).tmp" "$(2).maven.log" && echo "fetched $(1) into $(2)"; \
	  elif grep -q 'not found in\|Could not find artifact' "$(2).maven.log"; then \
	    rm -rf "$(2).tmp"; echo "Maven Central does not serve $(1): the tests that need it will skip"; \
	  else rm -rf "$(2).tmp"; echo "Maven could not fetch $(1) (see $(2).maven.log): the tests that need it will skip"; fi; \
	fi
endef

# An engine's wheels installed `--no-deps --target` into a folder of their own (never the project venv), once,
# and only where its Beam job server jar is there (without it no job can run on the engine):
# $(call engine_wheels,JOB SERVER JAR,FOLDER,REQUIREMENTS,FILE THE INSTALL MUST HOLD).
define engine_wheels
	@if [ -f "$(2)/.installed" ] || [ ! -f "$(1)" ]; then :; else \
	  echo "installing $(3) (--no-deps) into $(2)"; \
	  rm -rf "$(2)" && $(PY) -m pip install --quiet --no-deps --target "$(2)" $(3) && \
	  test -f "$(2)/$(4)" && touch "$(2)/.installed" || \
	  { echo "$(3) could not be installed: the tests that need it will skip"; rm -rf "$(2)"; }; \
	fi
endef

# Flink (tests/test_flink.py): Beam's Flink job server, the jar of the apache-beam pin's version, and the
# apache-flink wheels of FLINK_VERSION (pinned in tools/flink.py; they pin an old apache-beam), under
# $(FLINK_CACHE), where tools/flink.py looks.
FLINK_VERSION := $(shell sed -n 's/^FLINK_VERSION = "\([0-9][0-9.]*\)".*/\1/p' tools/flink.py)
FLINK_MINOR := $(basename $(FLINK_VERSION))
export FLINK_CACHE ?= $(HOME)/.cache/video-annotation/flink
FLINK_JOB_SERVER := beam-runners-flink-$(FLINK_MINOR)-job-server
FLINK_JOB_SERVER_JAR := $(FLINK_CACHE)/$(FLINK_JOB_SERVER)-$(BEAM_VERSION).jar

flink: | $(PY)
	@test -n "$(BEAM_VERSION)" -a -n "$(FLINK_VERSION)" || { echo "no apache-beam pin in setup.py or FLINK_VERSION in tools/flink.py"; exit 1; }
	@command -v java >/dev/null 2>&1 || echo "Java is not installed: the Flink tests will skip (install a JDK 17 and Maven, then make flink)"
	@mkdir -p "$(FLINK_CACHE)"
	$(call maven_jar,org.apache.beam:$(FLINK_JOB_SERVER):$(BEAM_VERSION),$(FLINK_JOB_SERVER_JAR))
	$(call engine_wheels,$(FLINK_JOB_SERVER_JAR),$(FLINK_CACHE)/flink-$(FLINK_VERSION),apache-flink==$(FLINK_VERSION) apache-flink-libraries==$(FLINK_VERSION),pyflink/bin/jobmanager.sh)

# Spark (tests/test_spark.py): Beam's Spark 3 job server (the apache-beam pin's version) and Spark itself (the
# pyspark wheel's jars and bin/spark-class, SPARK_VERSION in tools/spark.py), under $(SPARK_CACHE)/v<beam
# version>/ and $(SPARK_CACHE)/spark-<version>/, where tools/spark.py looks.
export SPARK_CACHE ?= $(HOME)/.cache/video-annotation/spark
SPARK_VERSION := $(shell sed -n 's/^SPARK_VERSION = "\([0-9.]*\)".*/\1/p' tools/spark.py)
SPARK_JOB_SERVER := $(SPARK_CACHE)/v$(BEAM_VERSION)/beam-runners-spark-3-job-server-$(BEAM_VERSION).jar

spark: | $(PY)
	@test -n "$(BEAM_VERSION)" || { echo "no apache-beam[gcp]==VERSION pin found in setup.py"; exit 1; }
	@command -v java >/dev/null 2>&1 || echo "Java is not installed: the Spark tests will skip (install a JDK 17 and Maven, then make spark)"
	@mkdir -p "$(dir $(SPARK_JOB_SERVER))"
	$(call maven_jar,org.apache.beam:beam-runners-spark-3-job-server:$(BEAM_VERSION),$(SPARK_JOB_SERVER))
	$(call engine_wheels,$(SPARK_JOB_SERVER),$(SPARK_CACHE)/spark-$(SPARK_VERSION),pyspark==$(SPARK_VERSION),pyspark/bin/spark-class)

# The README's pictures (docs/images) from a fresh `make demo`: the demo's training curves and confusion
# matrix, its report sorted by confidence (headless chromium) and the preview of one held-back clip.
images: demo browser
	cp $(DEMO)/model/training_curves.png docs/images/training_curves.png
	cp $(DEMO)/evaluation/confusion_matrix.png docs/images/confusion_matrix.png
	$(PY) -m tools.report_screenshot $(DEMO)/labels/report.html docs/images/report.png
	$(PY) -m model.preview $$(ls $(DEMO)/clips/heldback/growing/growing_0002.*) --model $(DEMO)/model \
	    --out docs/images/preview.gif

# Two worker processes, each test file whole on one of them (its module fixtures made once): many tests wait
# on child processes, servers and namespaced hosts, so two keep both cores busy. TEST_WORKERS=0 runs in one.
TEST_WORKERS ?= 2
test: $(STAMP) browser graphviz iproute2 labelstudio prism flink spark
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# Mutation testing (not part of `make test`): mutmut mutates each module that guards users' data and results
# and runs that module's own tests against every mutant (tools/mutants.py lists them); CPU-heavy, minutes a
# module. `make mutants MUTANTS=video/frames.py` runs one; MUTANTS="--survivors video/frames.py" runs its last
# run's survivors again against the tests as they are now. Results and the survivors explained: docs/TESTING.md.
MUTANTS ?=
mutants: $(STAMP)
	$(PY) -m tools.mutants $(MUTANTS)

clean:
	rm -rf $(DEMO) bench/_work
