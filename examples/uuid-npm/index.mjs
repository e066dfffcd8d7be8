// An ES module handler using an npm package, returning a full function URL response.
import { v4 as uuidv4, validate } from 'uuid';

export const handler = async (event) => {
  const id = uuidv4();
  return {
    statusCode: 201,
    headers: { 'content-type': 'application/json', 'x-generated-by': 'uuid-npm' },
    cookies: [`last-id=${id}; Path=/; HttpOnly`],
    body: JSON.stringify({ id, valid: validate(id), path: event.rawPath }),
  };
};
