import { hello } from '@vitreg/core'; export const h2 = (): string => hello() + '2';
