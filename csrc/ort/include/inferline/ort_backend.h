// inferline/ort_backend.h — ONNX Runtime as a native backend: batches run through ONNX Runtime's
// C API on the executor threads, with no Python (and no GIL) on the way.
//
//   OrtSessionOptionsSpec opts;            // threads, graph optimisation, session config entries
//   std::shared_ptr<OrtBackend> backend;
//   Status st = OrtBackend::Open(library, "model.onnx", opts, {"probs"}, &backend);
//   engine.Load(config, backend);
//
// `library` is the path of an ONNX Runtime shared library (libonnxruntime.so.*; the onnxruntime
// Python wheel ships one in onnxruntime/capi/). It is loaded with dlopen at the first Open and
// kept for the process's lifetime; nothing links against it, so the core builds where ONNX
// Runtime is absent and a host picks the runtime version it has. A library older than the C API
// version this was compiled against (inferline::OrtApiVersion()) is refused.
//
// Inputs are passed to ONNX Runtime without copies (tensors over the batch's own buffers); the
// outputs ONNX Runtime allocates become the batch's output tensors, also without copies (the
// tensor's owner releases ONNX Runtime's value). Run is safe from several executor threads at once
// (ONNX Runtime's session Run is).
//
// Results are those of the onnxruntime Python API with the same session options: the same
// library, graph and kernels compute them.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "inferline/backend.h"
#include "inferline/status.h"

namespace inferline {

// What a session is opened with, in ONNX Runtime's terms.
struct OrtSessionOptionsSpec {
  int intra_op_threads = 1;  // 0: ONNX Runtime's default (every core)
  int inter_op_threads = 0;  // 0: ONNX Runtime's default
  bool parallel = false;     // ORT_PARALLEL execution mode (inter-op threads run only in it)
  // 0 disable, 1 basic, 2 extended, 99 all (GraphOptimizationLevel's values).
  int graph_optimization = 99;
  // Session config entries ("session.intra_op.allow_spinning" = "0", ...), in order.
  std::vector<std::pair<std::string, std::string>> config_entries;
};

// A graph input or output as the session reports it.
struct OrtGraphArg {
  std::string name;
  std::string type;                // "tensor(float)", ...; "sequence", "map", ... for non-tensors
  bool has_shape = false;          // false: a non-tensor (or no shape known)
  std::vector<int64_t> dims;       // -1 for a dim that is not fixed
  std::vector<std::string> names;  // the symbolic name of each dim ("" when none)
};

// The C API version this build calls (ORT_API_VERSION of the header it was compiled with).
uint32_t OrtApiVersion() noexcept;

// The version string of the ONNX Runtime library at `library` ("1.32.0"), loading it if needed.
Status OrtLibraryVersion(const std::string& library, std::string* version);

class OrtBackend final : public Backend {
 public:
  // Opens `model_path` on ONNX Runtime's CPU execution provider. `output_names`: what Run fetches,
  // in the model config's order. Errors: FAILED_PRECONDITION when the library cannot be loaded
  // (or is too old), INVALID_ARGUMENT when ONNX Runtime refuses the model or an option.
  static Status Open(const std::string& library, const std::string& model_path, const OrtSessionOptionsSpec& options,
                     std::vector<std::string> output_names, std::shared_ptr<OrtBackend>* out);
  ~OrtBackend() override;
  OrtBackend(const OrtBackend&) = delete;
  OrtBackend& operator=(const OrtBackend&) = delete;

  Status Run(const std::vector<NamedTensor>& inputs, std::vector<NamedTensor>* outputs) override;

  const std::vector<OrtGraphArg>& graph_inputs() const noexcept { return graph_inputs_; }
  const std::vector<OrtGraphArg>& graph_outputs() const noexcept { return graph_outputs_; }
  const std::string& library_version() const noexcept { return library_version_; }

 private:
  struct Session;
  explicit OrtBackend(std::unique_ptr<Session> session);

  std::unique_ptr<Session> session_;
  std::vector<std::string> output_names_;
  std::vector<const char*> output_cnames_;
  std::vector<OrtGraphArg> graph_inputs_;
  std::vector<OrtGraphArg> graph_outputs_;
  std::string library_version_;
};

}  // namespace inferline
