/** @vitreg/coordinator: the gRPC coordinator of a vitreg training job; see README.md. */
export { startCoordinator, SERVER_OPTIONS, type CoordinatorOptions, type CoordinatorHandle } from './coordinator.js';
