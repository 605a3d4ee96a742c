// demo_file.h — reads the file written by export_demo.py (format "ILDIGIT1",
// documented there): the demo MLP's weights and config, test inputs, and the
// Python engine's outputs for them; DemoConfig makes the model's config from it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "inferline/model.h"
#include "inferline/preprocess.h"
#include "inferline/status.h"

struct DemoData {
  std::string model_name;
  int64_t version = 0;
  uint32_t features = 0, hidden = 0, classes = 0, rows = 0;
  uint32_t max_batch_size = 0;
  uint64_t max_queue_delay_us = 0;
  inferline::TabularSpec preprocessing;
  std::string source;            // where the test inputs came from
  std::vector<float> w1, w2;     // [features][hidden], [hidden][classes]
  std::vector<float> inputs;     // [rows][features], raw
  std::vector<float> logits;     // [rows][classes], from the Python engine
  std::vector<int64_t> labels;   // [rows], from the Python engine
};

inferline::Expected<DemoData> ReadDemoFile(const std::string& path);

// The demo's config (python/inferline/demo.py), from the exported file: input "pixels" FP32
// [-1, F] with its tabular preprocessing, outputs "logits" FP32 [-1, C] and "label" INT64 [-1, 1].
inferline::ModelConfig DemoConfig(const DemoData& d, uint32_t instances);
