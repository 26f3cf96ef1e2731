#include "syncbn/model_factory.h"

#include "syncbn/cpu_train_model.h"
#include "syncbn/cuda/train_model.h"
#include "syncbn/error.h"

namespace syncbn {

std::string resolve_device(const std::string& requested, Communicator& world) {
  if (requested != "auto") return requested;
  return world.any(!cuda_device_available(), "device selection") ? "cpu" : "cuda";
}

std::unique_ptr<TrainModel> make_train_model(const std::string& device, const ModelSpec& spec, const TrainConfig& cfg,
                                             Communicator& world) {
  if (device == "cuda") return make_cuda_train_model(spec, cfg, world);
  SBN_CHECK(device == "cpu", "unknown device '" + device + "'");
  return make_cpu_train_model(spec, cfg, world);
}

}  // namespace syncbn
